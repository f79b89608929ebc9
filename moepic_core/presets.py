"""Named ModelSpecs of known MoE models (sizes from their config.json files; tests/test_presets.py holds
the cited config values and checks every preset against what the family adapter reads from them).

`dense_params` is approximate: embeddings (+ untied head), attention, norms, routers, shared experts
and first dense layers, i.e. the published total parameter count minus the routed experts, or (where
marked) summed from the config's shapes; good to ~2%. MTP heads and vision towers, which the engine
does not load, are left out.
"""
from __future__ import annotations

from .errors import MoepicError
from .spec import ModelSpec


def _spec(name, family, layers, experts, top_k, hidden, inter, dense, kv_heads, head_dim, vocab,
          first_moe=0, shared=0, kv_layers=None) -> ModelSpec:
    return ModelSpec(name=name, family=family, num_layers=layers, moe_layers=tuple(range(first_moe, layers)),
                     num_experts=experts, top_k=top_k, hidden_size=hidden, intermediate_size=inter,
                     dense_params=dense, num_kv_heads=kv_heads, head_dim=head_dim, vocab_size=vocab,
                     shared_intermediate_size=shared, kv_layers=kv_layers)


PRESETS: dict[str, ModelSpec] = {s.name: s for s in (
    # 46.7 B total; attention 1.34 B + embeddings/head 0.26 B
    _spec("mixtral-8x7b", "mixtral", 32, 8, 2, 4096, 14336, 1_600_000_000, 8, 128, 32000),
    # 14.3 B total; shared experts 0.83 B + embeddings/head 0.62 B + attention 0.40 B
    _spec("qwen1.5-moe-a2.7b", "qwen2_moe", 24, 60, 4, 2048, 1408, 1_850_000_000, 16, 128, 151936, shared=5632),
    # 30.5 B total; attention 0.91 B + embeddings/head 0.62 B
    _spec("qwen3-30b-a3b", "qwen3_moe", 48, 128, 8, 2048, 768, 1_530_000_000, 4, 128, 151936),
    # 6.9 B total; attention 0.27 B + embeddings/head 0.21 B
    _spec("olmoe-1b-7b", "olmoe", 16, 64, 8, 2048, 1024, 480_000_000, 16, 128, 50304),
    # 15.7 B total; first layer dense, 2 shared experts; MLA caches one 576-value latent per token and layer
    _spec("deepseek-v2-lite", "deepseek_v2", 27, 64, 6, 2048, 1408, 1_300_000_000, 1, 288, 102400,
          first_moe=1, shared=2816),
    # 41.9 B total; attention 1.07 B + embeddings/head 0.26 B + norms
    _spec("phi-3.5-moe", "phimoe", 32, 16, 2, 4096, 6400, 1_600_000_000, 8, 128, 32064),
    # 20.9 B total; embeddings/head 1.16 B + attention 0.64 B (half the layers slide over 128 tokens)
    _spec("gpt-oss-20b", "gpt_oss", 24, 32, 4, 2880, 2880, 1_800_000_000, 8, 64, 201088),
    # 116.8 B total; embeddings/head 1.16 B + attention 0.95 B + routers
    _spec("gpt-oss-120b", "gpt_oss", 36, 128, 4, 2880, 2880, 2_130_000_000, 8, 64, 201088),
    # from shapes: embeddings/head 1.02 B + 30 Gated DeltaNet layers 1.0 B + 10 attention layers 0.27 B + shared
    # experts 0.13 B (vision tower and MTP not loaded); only the 10 full-attention layers keep a KV cache
    _spec("qwen3.5-35b-a3b", "qwen3_5_moe", 40, 256, 8, 2048, 512, 2_450_000_000, 2, 256, 248320, shared=512,
          kv_layers=10),
    # from shapes: attention 5.0 B + embeddings/head 1.24 B + shared experts 0.78 B + dense layer 0.13 B (MTP not loaded)
    _spec("glm-4.5-air", "glm4_moe", 46, 128, 8, 4096, 1408, 7_200_000_000, 8, 128, 151552, first_moe=1, shared=1408),
    # 3.3 B total; attention 0.20 B + tied embeddings 0.08 B
    _spec("granite-3.1-3b-a800m", "granitemoe", 32, 40, 8, 1536, 512, 280_000_000, 8, 64, 49155),
    # 21.8 B total; shared experts 0.64 B + attention 0.44 B + tied embeddings 0.26 B + dense layer 0.09 B
    _spec("ernie-4.5-21b-a3b", "ernie4_5_moe", 28, 64, 6, 2560, 1536, 1_440_000_000, 4, 128, 103424, first_moe=1,
          shared=3072),
)}


# Chat models on the Hugging Face hub -> the preset with their sizes (the app offers these for download).
HUB_MODELS: dict[str, str] = {
    "mistralai/Mixtral-8x7B-Instruct-v0.1": "mixtral-8x7b",
    "Qwen/Qwen1.5-MoE-A2.7B-Chat": "qwen1.5-moe-a2.7b",
    "Qwen/Qwen3-30B-A3B": "qwen3-30b-a3b",
    "allenai/OLMoE-1B-7B-0924-Instruct": "olmoe-1b-7b",
    "Qwen/Qwen3.5-35B-A3B": "qwen3.5-35b-a3b",
    "deepseek-ai/DeepSeek-V2-Lite-Chat": "deepseek-v2-lite",
    "zai-org/GLM-4.5-Air": "glm-4.5-air",
    "microsoft/Phi-3.5-MoE-instruct": "phi-3.5-moe",
    "ibm-granite/granite-3.1-3b-a800m-instruct": "granite-3.1-3b-a800m",
    "baidu/ERNIE-4.5-21B-A3B-PT": "ernie-4.5-21b-a3b",
    "openai/gpt-oss-20b": "gpt-oss-20b",
    "openai/gpt-oss-120b": "gpt-oss-120b",
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
