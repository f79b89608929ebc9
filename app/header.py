"""The header: GPU, VRAM, RAM, and a plain "CPU mode" banner when there is no CUDA GPU."""
from __future__ import annotations

import html

from app.panels import fmt_bytes


def detect_hardware() -> dict:
    """`moepic_core.runtime.hardware.detect().to_dict()` (gpu, vram_total_bytes, vram_free_bytes, driver,
    ram_total_bytes, ram_available_bytes, cpu_cores, cuda)."""
    from moepic_core.runtime.hardware import detect

    return detect().to_dict()


def header_html(hw: dict) -> str:
    ram = f'RAM {fmt_bytes(hw.get("ram_available_bytes"))} free of {fmt_bytes(hw.get("ram_total_bytes"))}'
    cores = f'{hw.get("cpu_cores", "?")} CPU cores'
    if hw.get("gpu"):
        gpu = (f'<b>{html.escape(str(hw["gpu"]))}</b> · VRAM {fmt_bytes(hw.get("vram_free_bytes"))} free of '
               f'{fmt_bytes(hw.get("vram_total_bytes"))}' + (f' · driver {html.escape(str(hw["driver"]))}'
                                                             if hw.get("driver") else ""))
    else:
        gpu = "<b>No GPU found</b>"
    banner = ""
    if not hw.get("cuda"):
        banner = ('<div class="mp-cpu-banner"><b>CPU mode.</b> No CUDA GPU is available, so the model runs on the '
                  'CPU. The demo (or a model given <code>--vram-gb</code>) gets a <b>simulated</b> VRAM budget: the '
                  'expert cache is held to that size in RAM and behaves as it would on a GPU of that size. A larger '
                  'model computes its experts <b>in place</b> in RAM, the fast way, with no cache to show. Speeds '
                  'are CPU speeds.</div>')
    return (f'<div class="mp-header"><div class="mp-brand">MoEpic</div>'
            f'<div class="mp-hw">{gpu} · {ram} · {cores}</div></div>{banner}')
