"""Named ModelSpecs of known MoE models (sizes from their config.json files).

`dense_params` is approximate: embeddings (+ untied head), attention, norms, routers and shared
experts, i.e. the published total parameter count minus the routed experts; good to ~2%.
"""
from __future__ import annotations

from .errors import MoepicError
from .spec import ModelSpec


def _spec(name, family, layers, experts, top_k, hidden, inter, dense, kv_heads, head_dim, vocab,
          first_moe=0, shared=0) -> ModelSpec:
    return ModelSpec(name=name, family=family, num_layers=layers, moe_layers=tuple(range(first_moe, layers)),
                     num_experts=experts, top_k=top_k, hidden_size=hidden, intermediate_size=inter,
                     dense_params=dense, num_kv_heads=kv_heads, head_dim=head_dim, vocab_size=vocab,
                     shared_intermediate_size=shared)


PRESETS: dict[str, ModelSpec] = {s.name: s for s in (
    # 46.7 B total; attention 1.34 B + embeddings/head 0.26 B
    _spec("mixtral-8x7b", "mixtral", 32, 8, 2, 4096, 14336, 1_600_000_000, 8, 128, 32000),
    # 14.3 B total; shared experts 0.83 B + embeddings/head 0.62 B + attention 0.40 B
    _spec("qwen1.5-moe-a2.7b", "qwen2_moe", 24, 60, 4, 2048, 1408, 1_850_000_000, 16, 128, 151936, shared=5632),
    # 30.5 B total; attention 0.91 B + embeddings/head 0.62 B
    _spec("qwen3-30b-a3b", "qwen3_moe", 48, 128, 8, 2048, 768, 1_530_000_000, 4, 128, 151936),
    # 6.9 B total; attention 0.27 B + embeddings/head 0.21 B
    _spec("olmoe-1b-7b", "olmoe", 16, 64, 8, 2048, 1024, 480_000_000, 16, 128, 50304),
    # 15.7 B total; first layer dense, 2 shared experts; MLA caches a compressed KV (approximated here)
    _spec("deepseek-v2-lite", "deepseek_v2", 27, 64, 6, 2048, 1408, 1_300_000_000, 1, 576, 102400,
          first_moe=1, shared=2816),
    # 41.9 B total; attention 1.07 B + embeddings/head 0.26 B + norms
    _spec("phi-3.5-moe", "phimoe", 32, 16, 2, 4096, 6400, 1_600_000_000, 8, 128, 32064),
)}


# Chat models on the Hugging Face hub -> the preset with their sizes (the app offers these for download).
HUB_MODELS: dict[str, str] = {
    "mistralai/Mixtral-8x7B-Instruct-v0.1": "mixtral-8x7b",
    "Qwen/Qwen1.5-MoE-A2.7B-Chat": "qwen1.5-moe-a2.7b",
    "Qwen/Qwen3-30B-A3B": "qwen3-30b-a3b",
    "allenai/OLMoE-1B-7B-0924-Instruct": "olmoe-1b-7b",
}


def preset_for_hub(repo_id: str) -> ModelSpec | None:
    """The sizes of a known hub model before it is downloaded, or None for an unknown id."""
    name = HUB_MODELS.get(repo_id)
    return PRESETS[name] if name else None


def get_preset(name: str) -> ModelSpec:
    spec = PRESETS.get(name.lower())
    if spec is None:
        raise MoepicError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return spec
