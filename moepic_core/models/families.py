"""One adapter per supported family. Sizes come from the model's own config.json."""
from __future__ import annotations

from .base import FamilyAdapter


class MixtralAdapter(FamilyAdapter):
    model_type = "mixtral"
    # hub checkpoints: w1 gate [I, H], w3 up [I, H], w2 down [H, I]; transformers renames block_sparse_moe -> mlp
    expert_key_format = "model.layers.{layer}.block_sparse_moe.experts.{expert}.{kind}.weight"
    kind_names = {"gate": "w1", "up": "w3", "down": "w2"}
    experts_attr = "num_local_experts"
    intermediate_attr = "intermediate_size"
    key_renames = ((".block_sparse_moe.", ".mlp."),)
    notes = "softmax over all experts in fp32, top-k, renormalised"


class Qwen2MoeAdapter(FamilyAdapter):
    model_type = "qwen2_moe"
    notes = "sigmoid-gated shared expert (kept in the dense part); dense layers from mlp_only_layers/decoder_sparse_step"

    def moe_layers(self) -> list[int]:
        c = self.config
        only_mlp = set(getattr(c, "mlp_only_layers", None) or [])
        step = getattr(c, "decoder_sparse_step", 1) or 1
        return [i for i in range(c.num_hidden_layers)
                if i not in only_mlp and self.num_experts > 0 and (i + 1) % step == 0]


class Qwen3MoeAdapter(Qwen2MoeAdapter):
    model_type = "qwen3_moe"
    notes = "no shared expert; dense MLP layers listed in mlp_only_layers; renormalises if norm_topk_prob"


class OlmoeAdapter(FamilyAdapter):
    model_type = "olmoe"
    intermediate_attr = "intermediate_size"
    notes = "every layer is MoE; renormalises only if norm_topk_prob"


ADAPTERS = {a.model_type: a for a in (MixtralAdapter, Qwen2MoeAdapter, Qwen3MoeAdapter, OlmoeAdapter)}
