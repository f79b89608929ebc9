"""Finding a model: resolve a name to a folder, check its files, pick the family adapter.

`resolve_model("demo")` is the built-in demo model; any folder with `config.json` and
`*.safetensors` weights works; a hub id ("org/name") resolves only if it is already downloaded
(downloading is the app's job: `moepic_core.hub`).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import ModelLoadError, UnsupportedModelError
from ..runtime.weights import read_safetensors_header, weight_files
from ..spec import ModelSpec
from .base import FamilyAdapter
from .families import (DeepseekV2Adapter, DeepseekV3Adapter, Ernie45MoeAdapter, Glm4MoeAdapter, MixtralAdapter,
                       OlmoeAdapter, PhimoeAdapter, Qwen2MoeAdapter, Qwen3MoeAdapter, Qwen35MoeAdapter)
from .gpt_oss import GptOssAdapter
from .granitemoe import GraniteMoeAdapter

ADAPTERS: dict[str, type[FamilyAdapter]] = {a.model_type: a for a in (
    MixtralAdapter, Qwen2MoeAdapter, Qwen3MoeAdapter, OlmoeAdapter, Qwen35MoeAdapter, DeepseekV2Adapter,
    DeepseekV3Adapter, Glm4MoeAdapter, PhimoeAdapter, GraniteMoeAdapter, Ernie45MoeAdapter, GptOssAdapter)}
ADAPTERS["qwen3_5_moe_text"] = Qwen35MoeAdapter  # the text model's own config.json

DEMO_MODEL_DIR = Path(__file__).resolve().parents[2] / "assets" / "demo-model"
SUPPORTED = ", ".join(sorted(ADAPTERS))
RUNNABLE = ", ".join(sorted(ADAPTERS))  # the runtime computes every family's experts


def resolve_model(name: str | Path) -> Path:
    """A folder for `name`: "demo", a local folder, or an already-downloaded hub id."""
    name = str(name).strip()
    if not name:
        raise ModelLoadError("no model given: pass a folder, a hub id, or 'demo'")
    if name == "demo":
        if not (DEMO_MODEL_DIR / "config.json").exists():
            raise ModelLoadError(f"the built-in demo model is missing from {DEMO_MODEL_DIR}")
        return DEMO_MODEL_DIR
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{path} is a file; give the model's folder (with config.json and *.safetensors)")
        return path
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        from .. import hub

        local = hub.cached_snapshot(name)
        if local is not None:
            return local
        raise ModelLoadError(f"{name} is not downloaded yet: download it first (the app does this) or give a local folder")
    raise ModelLoadError(f"model folder not found: {path}")


def load_config(folder: Path):
    """The model's transformers config; never runs remote code."""
    from transformers import AutoConfig

    if not (folder / "config.json").exists():
        raise ModelLoadError(f"{folder} has no config.json: not a transformers model folder")
    try:
        config_dict = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{folder}/config.json is unreadable: {e}") from e
    model_type = config_dict.get("model_type")
    if model_type not in ADAPTERS:
        raise UnsupportedModelError(
            f"architecture {model_type!r} is not supported; supported MoE families: {SUPPORTED}")
    try:
        return AutoConfig.from_pretrained(folder, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds for a bad config
        raise ModelLoadError(f"{folder}/config.json could not be read by transformers: {e}") from e


def get_adapter(config) -> FamilyAdapter:
    try:
        return ADAPTERS[config.model_type](config)
    except KeyError:
        raise UnsupportedModelError(
            f"architecture {config.model_type!r} is not supported; supported MoE families: {SUPPORTED}") from None


def tensor_shapes(folder: Path) -> dict[str, list[int]]:
    """Every tensor in the checkpoint: name -> shape."""
    shapes = {}
    for path in weight_files(folder):
        for key, info in read_safetensors_header(path).items():
            if key != "__metadata__":
                shapes[key] = info["shape"]
    return shapes


def load_spec(model: str | Path) -> ModelSpec:
    """Sizes of the model in a folder (or "demo"), read from its config and checkpoint headers."""
    folder = resolve_model(model)
    return checkpoint_spec(get_adapter(load_config(folder)), folder.name, tensor_shapes(folder))


def checkpoint_spec(adapter: FamilyAdapter, name: str, shapes: dict[str, list[int]]) -> ModelSpec:
    """The spec from the config and the checkpoint's tensor shapes; checks every MoE layer's experts are there."""
    adapter.locate(shapes)
    dense = sum(math.prod(shape) for key, shape in shapes.items() if adapter.is_dense_key(key))
    return adapter.spec(name, dense)
