"""The model picker's logic: the choices, the check of a choice before loading (the engine's own
validation and its `--quant auto` decision, moepic_core.fit), and hub downloads (only when the user
asks; never at start).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from moepic_core.models import DEMO_MODEL_DIR
from moepic_core.units import fmt_bytes

DEMO = "demo"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class ModelCheck:
    """What the picker knows about a choice before loading. `level` is "ok", "warn" or "error";
    `option` names what an error is about: "model" (--model, the picker) or "quant" (--quant)."""

    choice: str
    level: str
    message: str
    folder: Path | None = None  # a loadable folder, when there is one
    hub_id: str | None = None  # set when the model must be downloaded first
    option: str = "model"
    problem: str = ""  # an error without the model's description, for one command-line line

    def flag_line(self) -> str:
        """The error as launch.py prints it: `--quant none does not fit ...`, `--model: model folder not found: ...`."""
        problem = self.problem or self.message
        return f"--{self.option} {problem}" if self.option != "model" else f"--model: {problem}"

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


def engine_dtype(config, cpu: bool) -> str:
    """The dtype the engine will pick for this transformers config (or stand-in) on this device."""
    import torch

    from moepic_core.runtime.engine import default_dtype

    return default_dtype(config, torch.device("cpu" if cpu else "cuda"))


def fit_check(choice: str, spec, dtype: str, quant: str, ram_available: int, cpu: bool, intro: str,
              **found) -> ModelCheck:
    """The quant decision (moepic_core.fit) for `spec` on this machine as a picker message."""
    from moepic_core.errors import OptionError
    from moepic_core.fit import decide_quant, free_disk_bytes
    from moepic_core.fsutil import default_cache_dir

    cache = default_cache_dir()
    where = "" if cpu else " (the dense part goes to VRAM)"
    intro += (f"{spec.family}, {spec.num_moe_layers} MoE layers × {spec.num_experts} experts (top-{spec.top_k}), "
              f"{dtype}{where}. ")
    try:
        fit = decide_quant(spec, quant, dtype=dtype, cpu=cpu, ram_available=ram_available,
                           disk_free=free_disk_bytes(cache), cache_dir=cache)
    except OptionError as exc:
        return ModelCheck(choice, "error", intro + str(exc), option=exc.option, problem=exc.problem)
    return ModelCheck(choice, fit.level, intro + fit.message(), **found)


def check_folder(folder: Path, quant: str, ram_available: int, cpu: bool, choice: str | None = None) -> ModelCheck:
    """A local model folder, checked by the engine's own code (same words as the CLI), then the fit."""
    from moepic_core.errors import MoepicError
    from moepic_core.models import load_config, load_spec

    choice = choice or str(folder)
    try:
        spec = load_spec(folder)
        dtype = engine_dtype(load_config(folder), cpu)
    except MoepicError as exc:
        return ModelCheck(choice, "error", str(exc))
    return fit_check(choice, spec, dtype, quant, ram_available, cpu, "", folder=folder)


def check(choice: str, quant: str, ram_available: int, cpu: bool) -> ModelCheck:
    """Validate a picker entry (demo, a hub id, or a folder path) without loading anything."""
    choice = (choice or "").strip()
    if not choice:
        return ModelCheck(choice, "error", "no model given: pick one or type a folder path")
    if choice == DEMO:
        return check_folder(DEMO_MODEL_DIR, quant, ram_available, cpu, choice)
    if is_hub_id(choice):
        folder = cached_hub_folder(choice)
        if folder is not None:
            return check_folder(folder, quant, ram_available, cpu, choice)
        return check_hub(choice, quant, ram_available, cpu)
    return check_folder(Path(choice).expanduser(), quant, ram_available, cpu, choice)


def check_hub(repo_id: str, quant: str, ram_available: int, cpu: bool) -> ModelCheck:
    """A hub model that is not downloaded: the disk for the download, then the fit from its preset."""
    from huggingface_hub.constants import HF_HUB_CACHE

    from moepic_core.fit import free_disk_bytes
    from moepic_core.presets import preset_for_hub

    preset = preset_for_hub(repo_id)
    intro = f"{repo_id} is not downloaded yet: Load downloads it from huggingface.co (safetensors only)"
    if preset is None:
        return ModelCheck(repo_id, "warn", f"{intro}; its size is checked after the download.", hub_id=repo_id)
    download_bytes = preset.store_bytes("none", "bfloat16") + preset.dense_bytes("bfloat16")
    disk = free_disk_bytes(Path(HF_HUB_CACHE))
    if download_bytes > disk:
        return ModelCheck(repo_id, "error", f"{intro}, ≈ {fmt_bytes(download_bytes)}, but the disk of {HF_HUB_CACHE} "
                                            f"has {fmt_bytes(disk)} free (HF_HOME puts it on another disk).")
    dtype = engine_dtype(SimpleNamespace(dtype="bfloat16"), cpu)  # the hub checkpoints are bfloat16
    return fit_check(repo_id, preset, dtype, quant, ram_available, cpu,
                     f"{intro}, ≈ {fmt_bytes(download_bytes)} ({fmt_bytes(disk)} free on disk). ", hub_id=repo_id)


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
