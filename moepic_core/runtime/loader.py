"""Build a transformers model whose dense part comes from the checkpoint and whose experts are offloaded.

The model is created on the meta device (`init_empty_weights`, which keeps buffers such as rotary
`inv_freq` real); the dense tensors are read one by one from the safetensors files, renamed to module
names by transformers' own checkpoint renamings (`conversion_mapping`: e.g. Mixtral's
`block_sparse_moe` -> `mlp`, Qwen3.5's `model.language_model.` -> `model.`) and assigned; keys the
model class skips on load (MTP heads, vision towers) are skipped here too. Each MoE block's fused
`*Experts` module is then replaced by an `OffloadedExperts` whose weights come from the ExpertStore.
Expert weights never go through transformers' loader.
"""
from __future__ import annotations

import torch
from accelerate import init_empty_weights
from transformers import AutoModelForCausalLM
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import WeightRenaming, apply_renamings

from ..errors import ModelLoadError
from ..models import FamilyAdapter
from .weights import CheckpointReader


def build_dense_model(config, adapter: FamilyAdapter, reader: CheckpointReader, dtype: torch.dtype,
                      device: torch.device):
    """The model with its dense part loaded on `device` and every routed expert left on meta."""
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    renamings = [t for t in get_model_conversion_mapping(model) if isinstance(t, WeightRenaming)]
    declared = model.state_dict(keep_vars=True)  # routers and score biases the family keeps in float32
    state = {}
    for key in reader.keys():
        if adapter.is_dense_key(key):
            name = apply_renamings(key, renamings)
            want = declared[name].dtype if name in declared else dtype
            state[name] = reader.get(key).to(device=device, dtype=want)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if unexpected:
        raise ModelLoadError(f"checkpoint tensors the model does not have: {unexpected[:5]}")
    missing = [k for k in missing if ".experts." not in k and not _tied(model, k)]
    if missing:
        raise ModelLoadError(f"checkpoint lacks tensors: {missing[:5]}")
    model.tie_weights()
    check_moe_layers(model, adapter)
    for name, buf in model.named_buffers():
        if buf.device != device:
            _set_buffer(model, name, buf.to(device))
    return model.eval()


def check_moe_layers(model, adapter: FamilyAdapter) -> None:
    """The adapter's MoE layers are exactly the decoder layers whose block has routed experts."""
    have = [i for i in range(len(model.model.layers)) if hasattr(adapter.moe_block(model, i), "experts")]
    if have != adapter.moe_layers():
        raise ModelLoadError(f"{adapter.model_type}: the config gives MoE layers {adapter.moe_layers()}, "
                             f"the model has experts in layers {have}")


def _tied(model, key: str) -> bool:
    return bool(getattr(model.config, "tie_word_embeddings", False)) and key == "lm_head.weight"


def _set_buffer(model, name: str, value: torch.Tensor) -> None:
    owner, _, attr = name.rpartition(".")
    module = model.get_submodule(owner) if owner else model
    module._buffers[attr] = value
