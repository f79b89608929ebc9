"""FamilyAdapter: what differs between MoE families — config names, checkpoint keys, MoE layers.

All supported families share one module shape in transformers 5: `model.model.layers[i].mlp` is a
sparse MoE block with a router `.gate` and a fused experts module `.experts` whose forward is
`(hidden [T, H], top_k_index [T, K], top_k_weights [T, K]) -> [T, H]`. The adapter only says
which layers have that block and where each expert's weights sit in the checkpoint.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..spec import ModelSpec


@dataclass
class ExpertWeights:
    """One routed expert as the checkpoint gives it (any float dtype). Biases are optional:
    `gate_bias`/`up_bias` [I] belong to neurons (they travel with the neuron's rows when split);
    `down_bias` [H] is added once per expert, never once per segment."""

    gate: torch.Tensor  # [I, H]
    up: torch.Tensor  # [I, H]
    down: torch.Tensor  # [H, I]
    gate_bias: torch.Tensor | None = None
    up_bias: torch.Tensor | None = None
    down_bias: torch.Tensor | None = None


class FamilyAdapter:
    model_type: str = ""
    # checkpoint key of one expert's weight, formatted with layer, expert and kind in ("gate", "up", "down")
    expert_key_format: str = "model.layers.{layer}.mlp.experts.{expert}.{kind}_proj.weight"
    kind_names: dict = {"gate": "gate", "up": "up", "down": "down"}
    experts_attr = "num_experts"
    intermediate_attr = "moe_intermediate_size"
    # prefix rewrites from checkpoint keys to module names (first match wins)
    key_renames: tuple = ()
    notes: str = ""

    def __init__(self, config):
        self.config = config

    # --- sizes --------------------------------------------------------------------------------
    @property
    def num_experts(self) -> int:
        return int(getattr(self.config, self.experts_attr))

    @property
    def top_k(self) -> int:
        return int(self.config.num_experts_per_tok)

    @property
    def intermediate_size(self) -> int:
        return int(getattr(self.config, self.intermediate_attr))

    def moe_layers(self) -> list[int]:
        return list(range(self.config.num_hidden_layers))

    # --- checkpoint keys ----------------------------------------------------------------------
    def expert_key(self, layer: int, expert: int, kind: str) -> str:
        return self.expert_key_format.format(layer=layer, expert=expert, kind=self.kind_names[kind])

    def expert_weights(self, reader, layer: int, expert: int) -> ExpertWeights:
        """Expert `expert` of decoder layer `layer`, read from a CheckpointReader (override for fused
        or quantized checkpoint layouts)."""
        return ExpertWeights(*(reader.get(self.expert_key(layer, expert, k)) for k in ("gate", "up", "down")))

    def is_expert_key(self, key: str) -> bool:
        return self._expert_re.match(key) is not None

    @property
    def _expert_re(self):
        pattern = re.escape(self.expert_key_format).replace(r"\{layer\}", r"\d+").replace(r"\{expert\}", r"\d+")
        return re.compile(pattern.replace(r"\{kind\}", r"\w+"))

    def module_key(self, checkpoint_key: str) -> str:
        for old, new in self.key_renames:
            if old in checkpoint_key:
                return checkpoint_key.replace(old, new)
        return checkpoint_key

    # --- modules ------------------------------------------------------------------------------
    @staticmethod
    def moe_block(model, layer: int):
        return model.model.layers[layer].mlp

    def spec(self, name: str, dense_params: int) -> ModelSpec:
        c = self.config
        heads = c.num_attention_heads
        return ModelSpec(
            name=name, family=self.model_type, num_layers=c.num_hidden_layers, moe_layers=tuple(self.moe_layers()),
            num_experts=self.num_experts, top_k=self.top_k, hidden_size=c.hidden_size,
            intermediate_size=self.intermediate_size, dense_params=dense_params,
            num_kv_heads=getattr(c, "num_key_value_heads", None) or heads,
            head_dim=getattr(c, "head_dim", None) or c.hidden_size // heads, vocab_size=c.vocab_size,
            shared_intermediate_size=int(getattr(c, "shared_expert_intermediate_size", 0) or 0),
        )
