"""Adapters of the families whose routed experts are plain down(act(gate) * up): what differs is only
which decoder layers are MoE, where the router sits and how the KV cache is shaped. Sizes come from the
model's own config.json (through transformers' config class)."""
from __future__ import annotations

from .base import FamilyAdapter


class MixtralAdapter(FamilyAdapter):
    model_type = "mixtral"
    notes = "softmax over all experts in fp32, top-k, renormalised"


class Qwen2MoeAdapter(FamilyAdapter):
    model_type = "qwen2_moe"
    notes = "sigmoid-gated shared expert (kept in the dense part); dense layers from mlp_only_layers/decoder_sparse_step"

    def moe_layers(self) -> list[int]:
        c = self.text_config
        only_mlp = set(getattr(c, "mlp_only_layers", None) or [])
        step = getattr(c, "decoder_sparse_step", 1) or 1
        return [i for i in range(self.num_layers)
                if i not in only_mlp and self.num_experts > 0 and (i + 1) % step == 0]


class Qwen3MoeAdapter(Qwen2MoeAdapter):
    model_type = "qwen3_moe"
    notes = "no shared expert; dense MLP layers listed in mlp_only_layers; renormalises if norm_topk_prob"


class OlmoeAdapter(FamilyAdapter):
    model_type = "olmoe"
    notes = "every layer is MoE; renormalises only if norm_topk_prob"


class Qwen35MoeAdapter(FamilyAdapter):
    model_type = "qwen3_5_moe"
    notes = ("every layer MoE with a sigmoid-gated shared expert; 3 of 4 layers linear attention (no KV cache); "
             "the hub's conditional-generation checkpoint is read as its text model (vision tower and MTP skipped)")


class FirstDenseAdapter(FamilyAdapter):
    """Families whose first `first_k_dense_replace` layers have a dense MLP instead of experts."""

    def moe_layers(self) -> list[int]:
        return list(range(int(getattr(self.text_config, "first_k_dense_replace", 0) or 0), self.num_layers))


class DeepseekV2Adapter(FirstDenseAdapter):
    model_type = "deepseek_v2"
    notes = "MLA attention; shared experts in the dense part; greedy or group-limited top-k by the router"

    def kv_geometry(self) -> tuple[int, int, int]:
        # MLA caches one compressed latent per token and layer: kv_lora_rank + qk_rope_head_dim values
        c = self.text_config
        return self.num_layers, 1, (c.kv_lora_rank + c.qk_rope_head_dim) // 2


class DeepseekV3Adapter(DeepseekV2Adapter):
    model_type = "deepseek_v3"
    notes = "MLA; sigmoid scores + e_score_correction_bias, group-limited top-k, routed_scaling_factor (router's)"


class Glm4MoeAdapter(FirstDenseAdapter):
    model_type = "glm4_moe"
    notes = "sigmoid scores + e_score_correction_bias (router's); shared experts in the dense part; MTP layer skipped"


class PhimoeAdapter(FamilyAdapter):
    model_type = "phimoe"
    router_attr = "router"
    notes = "sparsemixer top-2 routing (router's)"


class Ernie45MoeAdapter(FamilyAdapter):
    model_type = "ernie4_5_moe"
    notes = "MoE layers from moe_layer_start_index/end_index/interval; shared experts in the dense part"

    def moe_layers(self) -> list[int]:
        c = self.text_config
        return [i for i in range(self.num_layers) if (i + 1) % c.moe_layer_interval == 0
                and c.moe_layer_start_index <= i <= c.moe_layer_end_index]
