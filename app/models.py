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
HUB_IDS = (  # the known hub models, in the picker's order
    "mistralai/Mixtral-8x7B-Instruct-v0.1",
    "Qwen/Qwen1.5-MoE-A2.7B-Chat",
    "Qwen/Qwen3-30B-A3B",
    "allenai/OLMoE-1B-7B-0924-Instruct",
)
HUB_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]
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


def choices() -> list[str]:
    return [DEMO, *HUB_IDS]


def is_hub_id(choice: str) -> bool:
    return bool(_HUB_ID.match(choice)) and not Path(choice).expanduser().exists()


def cached_hub_folder(repo_id: str) -> Path | None:
    """The local snapshot of `repo_id` if it was downloaded before; never touches the network."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=HUB_FILES, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure here just means "not downloaded yet"
        return None
    return folder if any(folder.glob("*.safetensors")) else None


def _config_dtype(folder: Path) -> str:
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return "float32"
    dtype = str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32").replace("torch.", "")
    return dtype if dtype in ("float32", "float16", "bfloat16") else "float32"


def ram_need(folder: Path, quant: str, dtype: str | None = None) -> tuple[int, str]:
    """Bytes of host RAM the model needs (all experts + the dense part), and a breakdown."""
    from moepic_core.models import load_spec

    spec = load_spec(folder)
    dtype = dtype or _config_dtype(folder)
    store, dense = spec.store_bytes(quant, dtype), spec.dense_bytes(dtype)
    detail = (f"{spec.family}, {spec.num_moe_layers} MoE layers × {spec.num_experts} experts (top-{spec.top_k}); "
              f"experts {fmt_bytes(store)} at {quant if quant != 'none' else dtype} + dense part {fmt_bytes(dense)}")
    return store + dense, detail


def ram_verdict(need: int, available: int) -> tuple[str, str]:
    numbers = f"needs ≈ {fmt_bytes(need)} of RAM, {fmt_bytes(available)} available"
    if need > available:
        return "error", f"Not enough RAM: this model {numbers}. Pick int4/int8 or a smaller model."
    if need > RAM_WARN_SHARE * available:
        return "warn", f"Tight on RAM: this model {numbers}; the machine may swap."
    return "ok", f"RAM check passed: {numbers}."


def check_folder(folder: Path, quant: str, ram_available: int, choice: str | None = None) -> ModelCheck:
    choice = choice or str(folder)
    if not folder.is_dir():
        return ModelCheck(choice, "error", f"No such folder: {folder}")
    if not (folder / "config.json").is_file():
        return ModelCheck(choice, "error", f"{folder} has no config.json: it is not a transformers model folder.")
    if not any(folder.glob("*.safetensors")):
        return ModelCheck(choice, "error", f"{folder} has no .safetensors weights (other formats are not read).")
    try:
        need, detail = ram_need(folder, quant)
    except ImportError:  # TODO(app): drop once moepic_core.models.load_spec exists
        return ModelCheck(choice, "ok", "Model folder found (size check unavailable).", folder=folder)
    except Exception as exc:  # noqa: BLE001 - MoepicError, bad config: shown inline as is
        return ModelCheck(choice, "error", str(exc))
    level, verdict = ram_verdict(need, ram_available)
    return ModelCheck(choice, level, f"{detail}. {verdict}", folder=folder, need_bytes=need)


def check(choice: str, quant: str, ram_available: int) -> ModelCheck:
    """Validate a picker entry (demo, a hub id, or a folder path) without loading anything."""
    choice = (choice or "").strip()
    if not choice:
        return ModelCheck(choice, "error", "Pick a model or type a folder path.")
    if choice == DEMO:
        if not (DEMO_FOLDER / "config.json").is_file():
            return ModelCheck(choice, "error", f"The built-in demo model is missing ({DEMO_FOLDER}). "
                                               "Type the path of a model folder instead.")
        return check_folder(DEMO_FOLDER, quant, ram_available, choice)
    if is_hub_id(choice):
        folder = cached_hub_folder(choice)
        if folder is not None:
            return check_folder(folder, quant, ram_available, choice)
        return ModelCheck(choice, "warn", f"{choice} is not downloaded yet: Load downloads it from huggingface.co "
                                          "(safetensors only), then checks RAM before loading.", hub_id=choice)
    return check_folder(Path(choice).expanduser(), quant, ram_available, choice)


def download(repo_id: str, progress) -> Path:
    """Download `repo_id`'s safetensors, config and tokenizer; `progress(stage, fraction)` follows the bytes.
    Offline or unreachable hub: a RuntimeError that says so."""
    from huggingface_hub import snapshot_download
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

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES, tqdm_class=Reporter))
    except Exception as exc:  # noqa: BLE001 - huggingface_hub raises many kinds; the user needs one message
        raise RuntimeError(f"Could not download {repo_id}: huggingface.co is unreachable or refused "
                           f"({type(exc).__name__}). If this machine is offline, download the model elsewhere, "
                           "copy the folder here and type its path in the picker.") from exc
