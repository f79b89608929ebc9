"""The model picker's logic: the choices, inline validation of a folder, the host-RAM check, and
hub downloads (only when the user asks; never at start).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from app.panels import fmt_bytes

DEMO = "demo"
DEMO_FOLDER = Path(__file__).resolve().parent.parent / "assets" / "demo-model"
RAM_WARN_SHARE = 0.8  # warn when a model needs more than this share of the available RAM
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class ModelCheck:
    """What the picker knows about a choice before loading. `level` is "ok", "warn" or "error"."""

    choice: str
    level: str
    message: str
    folder: Path | None = None  # a loadable folder, when there is one
    hub_id: str | None = None  # set when the model must be downloaded first
    need_bytes: int | None = None

    @property
    def loadable(self) -> bool:
        return self.level != "error"


def choices() -> list[tuple[str, str]]:
    """(label, value) pairs of the picker: the demo, then each offered hub model with its size."""
    from moepic_core.presets import HUB_MODELS, PRESETS

    def label(repo_id: str) -> str:
        spec = PRESETS[HUB_MODELS[repo_id]]
        return f"{repo_id} ({spec.total_params / 1e9:.1f} B, {spec.active_params / 1e9:.1f} B active)"

    return [(DEMO, DEMO), *((label(repo_id), repo_id) for repo_id in HUB_MODELS)]


def is_hub_id(choice: str) -> bool:
    return bool(_HUB_ID.match(choice)) and not Path(choice).expanduser().exists()


def cached_hub_folder(repo_id: str) -> Path | None:
    """The local snapshot of `repo_id` if it was downloaded before; never touches the network."""
    from moepic_core.hub import cached_snapshot

    folder = cached_snapshot(repo_id)
    return folder if folder is not None and any(folder.glob("*.safetensors")) else None


def engine_dtype(folder: Path | None, cpu: bool) -> str:
    """The dtype the engine will compute in: float32 on the CPU, the checkpoint's half type on a GPU."""
    if cpu:
        return "float32"
    try:
        cfg = json.loads((folder / "config.json").read_text()) if folder else {}
    except (OSError, ValueError):
        cfg = {}
    return "bfloat16" if "bfloat16" in str(cfg.get("dtype") or cfg.get("torch_dtype") or "") else "float16"


def ram_need_spec(spec, quant: str, dtype: str, cpu: bool) -> tuple[int, str]:
    """Bytes of host RAM for the experts (plus the dense part in CPU mode), and a breakdown."""
    store = spec.store_bytes(quant, dtype)
    dense = spec.dense_bytes(dtype) if cpu else 0
    where = f" + dense part {fmt_bytes(dense)}" if cpu else " (dense part goes to VRAM)"
    detail = (f"{spec.family}, {spec.num_moe_layers} MoE layers × {spec.num_experts} experts (top-{spec.top_k}); "
              f"experts {fmt_bytes(store)} at {quant if quant != 'none' else dtype}{where}")
    return store + dense, detail


def ram_verdict(need: int, available: int) -> tuple[str, str]:
    numbers = f"needs ≈ {fmt_bytes(need)} of RAM, {fmt_bytes(available)} available"
    if need > available:
        return "error", f"Not enough RAM: this model {numbers}. Pick int4/int8 or a smaller model."
    if need > RAM_WARN_SHARE * available:
        return "warn", f"Tight on RAM: this model {numbers}; the machine may swap."
    return "ok", f"RAM check passed: {numbers}."


def check_folder(folder: Path, quant: str, ram_available: int, cpu: bool, choice: str | None = None) -> ModelCheck:
    choice = choice or str(folder)
    if not folder.is_dir():
        return ModelCheck(choice, "error", f"No such folder: {folder}")
    if not (folder / "config.json").is_file():
        return ModelCheck(choice, "error", f"{folder} has no config.json: it is not a transformers model folder.")
    if not any(folder.glob("*.safetensors")):
        return ModelCheck(choice, "error", f"{folder} has no .safetensors weights (other formats are not read).")
    from moepic_core.models import load_spec

    try:
        need, detail = ram_need_spec(load_spec(folder), quant, engine_dtype(folder, cpu), cpu)
    except Exception as exc:  # noqa: BLE001 - MoepicError, bad config: shown inline as is
        return ModelCheck(choice, "error", str(exc))
    level, verdict = ram_verdict(need, ram_available)
    return ModelCheck(choice, level, f"{detail}. {verdict}", folder=folder, need_bytes=need)


def check(choice: str, quant: str, ram_available: int, cpu: bool) -> ModelCheck:
    """Validate a picker entry (demo, a hub id, or a folder path) without loading anything."""
    choice = (choice or "").strip()
    if not choice:
        return ModelCheck(choice, "error", "Pick a model or type a folder path.")
    if choice == DEMO:
        if not (DEMO_FOLDER / "config.json").is_file():
            return ModelCheck(choice, "error", f"The built-in demo model is missing ({DEMO_FOLDER}). "
                                               "Type the path of a model folder instead.")
        return check_folder(DEMO_FOLDER, quant, ram_available, cpu, choice)
    if is_hub_id(choice):
        folder = cached_hub_folder(choice)
        if folder is not None:
            return check_folder(folder, quant, ram_available, cpu, choice)
        return check_hub(choice, quant, ram_available, cpu)
    return check_folder(Path(choice).expanduser(), quant, ram_available, cpu, choice)


def check_hub(repo_id: str, quant: str, ram_available: int, cpu: bool) -> ModelCheck:
    """A known hub model that is not downloaded: the RAM check from its preset, before any download."""
    from moepic_core.presets import preset_for_hub

    preset = preset_for_hub(repo_id)
    intro = f"{repo_id} is not downloaded yet: Load downloads it from huggingface.co (safetensors only)"
    if preset is None:
        return ModelCheck(repo_id, "warn", f"{intro}; its size is checked after the download.", hub_id=repo_id)
    dtype = "float32" if cpu else "bfloat16"
    need, detail = ram_need_spec(preset, quant, dtype, cpu)
    download_bytes = preset.store_bytes("none", "bfloat16") + preset.dense_bytes("bfloat16")
    level, verdict = ram_verdict(need, ram_available)
    return ModelCheck(repo_id, level, f"{intro}, ≈ {fmt_bytes(download_bytes)}. {detail}. {verdict}",
                      hub_id=repo_id if level != "error" else None, need_bytes=need)


def download(repo_id: str, progress) -> Path:
    """Download `repo_id`'s safetensors, config and tokenizer; `progress(stage, fraction)` follows the
    bytes. Offline: ModelLoadError with a message that says so."""
    from moepic_core.hub import download as hub_download
    from tqdm.auto import tqdm

    class Reporter(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = False
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            out = super().update(n)
            if self.unit == "B" and self.total:
                progress(f"downloading {repo_id} ({fmt_bytes(self.n)} of {fmt_bytes(self.total)})",
                         min(1.0, self.n / self.total))
            return out

    return hub_download(repo_id, tqdm_class=Reporter)
