"""Granite-MoE: its checkpoints keep each layer's experts as two fused linears of the MoE block,
  model.layers.<l>.block_sparse_moe.input_linear.weight  [E, 2I, H] (gate rows, then up rows)
  model.layers.<l>.block_sparse_moe.output_linear.weight [E, H, I]
which transformers renames to the block's `experts.gate_up_proj` / `experts.down_proj`."""
from __future__ import annotations

import re

from ..errors import ModelLoadError
from . import checkpoint
from .base import FamilyAdapter

FUSED_LINEAR = re.compile(r"^.+\.layers\.(?P<layer>\d+)\.block_sparse_moe\.(?:input|output)_linear\.weight$")


class GraniteMoeAdapter(FamilyAdapter):
    model_type = "granitemoe"
    block_attr = "block_sparse_moe"
    router_attr = "router"
    notes = "softmax over the top-k logits; fused input/output linears in the checkpoint; scaled residuals"

    def is_expert_key(self, key: str) -> bool:
        return FUSED_LINEAR.match(key) is not None or super().is_expert_key(key)

    def locate(self, keys) -> dict:
        keys = set(keys)
        prefix = "model.layers.{}.block_sparse_moe."
        if f"{prefix.format(self.moe_layers()[0])}input_linear.weight" not in keys:
            return super().locate(keys)  # a checkpoint saved in transformers' fused experts layout
        self._sources = {layer: checkpoint.Fused(f"{prefix.format(layer)}input_linear.weight",
                                                 f"{prefix.format(layer)}output_linear.weight")
                         for layer in self.moe_layers()}
        missing = [k for s in self._sources.values() for k in (s.gate_up, s.down) if k not in keys]
        if missing:
            raise ModelLoadError(f"checkpoint lacks Granite-MoE expert tensor {missing[0]!r}")
        return self._sources
