"""FamilyAdapter: what differs between MoE families — config names, MoE layers, checkpoint layout.

Every supported family has one module shape in transformers 5: decoder layer `i` holds a sparse MoE
block (`.mlp`, or another `block_attr`) with a router (`.gate`, or `router_attr`) and a fused
`*Experts` module `.experts` whose forward is `(hidden [T, H], top_k_index [T, K], top_k_weights
[T, K]) -> [T, H]`. Routing (group-limited top-k, score bias, sparsemixer) and shared experts stay
transformers' business: the engine replaces only `.experts`. The generic adapter reads the sizes
from the (text) config by the names transformers uses and finds the experts in the checkpoint by
key name (checkpoint.py); a family overrides only what differs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

import torch

from ..errors import ModelLoadError
from ..spec import ModelSpec
from . import checkpoint


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
    # config names of the routed-expert count and width, first present wins
    experts_attrs: tuple = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
    intermediate_attrs: tuple = ("moe_intermediate_size", "intermediate_size")
    block_attr = "mlp"  # decoder layer -> MoE block
    router_attr = "gate"  # MoE block -> router
    # the expert math the checkpoint needs: "glu" is down(act(gate) * up), no biases
    expert_math = "glu"
    expert_biases = False  # experts carry biases (gate/up per neuron, down per expert) the store keeps
    notes: str = ""

    def __init__(self, config):
        self.config = config
        self.text_config = config.get_text_config()
        self._sources = None

    # --- sizes --------------------------------------------------------------------------------
    def _first_attr(self, names: tuple) -> int:
        for name in names:
            value = getattr(self.text_config, name, None)
            if value is not None:
                return int(value)
        raise ModelLoadError(f"{self.model_type} config has none of {', '.join(names)}")

    @property
    def num_experts(self) -> int:
        return self._first_attr(self.experts_attrs)

    @property
    def top_k(self) -> int:
        return int(self.text_config.num_experts_per_tok)

    @property
    def intermediate_size(self) -> int:
        return self._first_attr(self.intermediate_attrs)

    @property
    def num_layers(self) -> int:
        return int(self.text_config.num_hidden_layers)

    def moe_layers(self) -> list[int]:
        return list(range(self.num_layers))

    def kv_geometry(self) -> tuple[int, int, int]:
        """(layers holding a KV cache, KV heads, head dim): bytes per token = 2 * product * itemsize."""
        c = self.text_config
        heads = c.num_attention_heads
        linear = sum(t == "linear_attention" for t in getattr(c, "layer_types", None) or ())  # fixed-size state
        return (self.num_layers - linear, getattr(c, "num_key_value_heads", None) or heads,
                getattr(c, "head_dim", None) or c.hidden_size // heads)

    # --- checkpoint keys ----------------------------------------------------------------------
    @cached_property
    def _ignored(self) -> list[re.Pattern]:
        """Checkpoint keys the causal-LM class skips on load (MTP heads, vision towers)."""
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

        patterns = getattr(MODEL_FOR_CAUSAL_LM_MAPPING[type(self.config)], "_keys_to_ignore_on_load_unexpected", None)
        return [re.compile(p) for p in patterns or ()]

    def is_ignored_key(self, key: str) -> bool:
        return any(p.search(key) for p in self._ignored)

    def is_expert_key(self, key: str) -> bool:
        return checkpoint.EXPERT_KEY.match(key) is not None

    def is_dense_key(self, key: str) -> bool:
        """A tensor the dense model loads: neither a routed expert nor skipped by transformers."""
        return not self.is_expert_key(key) and not self.is_ignored_key(key)

    def locate(self, keys) -> dict:
        """MoE decoder layer -> where its experts sit (checkpoint.PerExpert or .Fused); raises a
        ModelLoadError naming the layer when a MoE layer's experts are missing."""
        keys = {k for k in keys if not self.is_ignored_key(k)}
        stems = checkpoint.expert_stems(keys)
        self._sources = {layer: checkpoint.locate_layer(keys, stems.get(layer, set()), layer)
                         for layer in self.moe_layers()}
        return self._sources

    def activation(self, model):
        """The experts' h = glu(gate, up) (kernels.Activation): by the config's hidden_act where the
        native kernels know it, else the experts module's own act_fn (torch computes those)."""
        from ..runtime.kernels import Activation

        act = str(getattr(self.text_config, "hidden_act", "silu"))
        name = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh"}.get(act)
        if name:
            return Activation(name)
        return Activation("", fn=self.moe_block(model, self.moe_layers()[0]).experts.act_fn)

    def expert_weights(self, reader, layer: int, expert: int) -> ExpertWeights:
        """Expert `expert` of decoder layer `layer`, read from a CheckpointReader (override for other
        checkpoint layouts)."""
        source = (self._sources or self.locate(reader.keys()))[layer]
        if isinstance(source, checkpoint.Fused):
            gate_up = reader.row(source.gate_up, expert)  # [2I, H]
            gate, up = gate_up.chunk(2, dim=0)
            return ExpertWeights(gate, up, reader.row(source.down, expert))
        return ExpertWeights(*(reader.get(key) for key in source.keys(expert)))

    # --- modules ------------------------------------------------------------------------------
    def moe_block(self, model, layer: int):
        return getattr(model.model.layers[layer], self.block_attr)

    def router(self, model, layer: int):
        return getattr(self.moe_block(model, layer), self.router_attr)

    def spec(self, name: str, dense_params: int) -> ModelSpec:
        c = self.text_config
        kv_layers, kv_heads, head_dim = self.kv_geometry()
        return ModelSpec(
            name=name, family=self.model_type, num_layers=self.num_layers, moe_layers=tuple(self.moe_layers()),
            num_experts=self.num_experts, top_k=self.top_k, hidden_size=c.hidden_size,
            intermediate_size=self.intermediate_size, dense_params=dense_params, num_kv_heads=kv_heads,
            head_dim=head_dim, vocab_size=c.vocab_size, kv_layers=kv_layers,
            shared_intermediate_size=self.shared_intermediate_size,
        )

    @property
    def shared_intermediate_size(self) -> int:
        """Width of the shared expert(s) of a MoE layer (kept in the dense part), 0 if none."""
        c = self.text_config
        if getattr(c, "shared_expert_intermediate_size", None):
            return int(c.shared_expert_intermediate_size)
        shared = getattr(c, "n_shared_experts", None) or getattr(c, "moe_num_shared_experts", None) or 0
        return int(shared) * self.intermediate_size
