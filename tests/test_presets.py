"""Every hub model the app offers (or will offer) resolves to a preset whose sizes match its real
config.json: the cited config values below go through transformers' config class and MoEpic's family
adapter, and the result must equal the hand-written preset; the dense part must match what
transformers builds from that config (on the meta device) to 3%."""
from __future__ import annotations

import pytest
import torch

from moepic_core.models import ADAPTERS, get_adapter
from moepic_core.presets import HUB_MODELS, PRESETS

# hub id -> (model_type, the config.json fields that set the shapes, where they were read). No download
# is possible here; "code corpus id N" is a copy of the config found with the project's search tools.
CITED = {
    "mistralai/Mixtral-8x7B-Instruct-v0.1": ("mixtral", dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        num_local_experts=8, num_experts_per_tok=2, vocab_size=32000, tie_word_embeddings=False),
        "transformers MixtralConfig defaults (documented checkpoint mistralai/Mixtral-8x7B-v0.1, same shapes); "
        "shared/TRANSFORMERS_NOTES.md real-sizes table"),
    "Qwen/Qwen1.5-MoE-A2.7B-Chat": ("qwen2_moe", dict(
        hidden_size=2048, intermediate_size=5632, moe_intermediate_size=1408, shared_expert_intermediate_size=5632,
        num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16, num_experts=60, num_experts_per_tok=4,
        decoder_sparse_step=1, vocab_size=151936, tie_word_embeddings=False),
        "config.json of huggingface.co/RichardErkhov/Qwen_-_Qwen1.5-MoE-A2.7B-Chat-4bits (commit 3718183, "
        "_name_or_path Qwen1.5-MoE-A2.7B-Chat); code corpus id 56718850834"),
    "Qwen/Qwen3-30B-A3B": ("qwen3_moe", dict(
        hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768, num_hidden_layers=48,
        num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128, num_experts_per_tok=8,
        decoder_sparse_step=1, mlp_only_layers=[], vocab_size=151936, tie_word_embeddings=False),
        "THUDM slime scripts/models/qwen3-30B-A3B.sh (Megatron arguments of the checkpoint)"),
    "allenai/OLMoE-1B-7B-0924-Instruct": ("olmoe", dict(
        hidden_size=2048, intermediate_size=1024, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=16,
        num_experts=64, num_experts_per_tok=8, vocab_size=50304, tie_word_embeddings=False),
        "fields of allenai/OLMoE-1B-7B-0924's config.json quoted in code corpus id 71007947258"),
    "Qwen/Qwen3.5-35B-A3B": ("qwen3_5_moe", dict(text_config=dict(
        hidden_size=2048, num_hidden_layers=40, num_experts=256, num_experts_per_tok=8, moe_intermediate_size=512,
        shared_expert_intermediate_size=512, num_attention_heads=16, num_key_value_heads=2, head_dim=256,
        vocab_size=248320, linear_num_key_heads=16, linear_num_value_heads=32, linear_key_head_dim=128,
        linear_value_head_dim=128, layer_types=(["linear_attention"] * 3 + ["full_attention"]) * 10,
        tie_word_embeddings=False)),
        "transformers Qwen3_5MoeTextConfig defaults ('Qwen3.5-35B-A3B style') and docs model_doc/qwen3_5_moe "
        "(256 experts, 8 routed + 1 shared); huggingface.co/RESMP-DEV/Qwen3.5-35B-A3B-GPTQ-Hybrid card (40 layers: "
        "30 linear + 10 full attention, hidden 2048); text_config copy in code corpus id 55053118975"),
    "deepseek-ai/DeepSeek-V2-Lite-Chat": ("deepseek_v2", dict(
        hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408, num_hidden_layers=27,
        n_routed_experts=64, num_experts_per_tok=6, n_shared_experts=2, first_k_dense_replace=1,
        num_attention_heads=16, num_key_value_heads=16, kv_lora_rank=512, q_lora_rank=None, qk_nope_head_dim=128,
        qk_rope_head_dim=64, v_head_dim=128, vocab_size=102400, tie_word_embeddings=False),
        "DeepseekV2Config dump of deepseek-ai/DeepSeek-V2-Lite in code corpus id 62526029280; modelscope "
        "deepseek-ai/DeepSeek-V2-Lite config.json quoted in code corpus id 3264465575"),
    "zai-org/GLM-4.5-Air": ("glm4_moe", dict(
        hidden_size=4096, intermediate_size=10944, moe_intermediate_size=1408, num_hidden_layers=46,
        n_routed_experts=128, num_experts_per_tok=8, n_shared_experts=1, first_k_dense_replace=1,
        num_attention_heads=96, num_key_value_heads=8, head_dim=128, attention_bias=True, vocab_size=151552,
        tie_word_embeddings=False),
        "THUDM slime scripts/models/glm4.5-106B-A12B.sh (github zyzshishui/slime_), transformers docs "
        "model_doc/glm4_moe (GLM-4.5-Air: 106 B total, 12 B active)"),
    "microsoft/Phi-3.5-MoE-instruct": ("phimoe", dict(
        hidden_size=4096, intermediate_size=6400, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        num_local_experts=16, num_experts_per_tok=2, vocab_size=32064, tie_word_embeddings=False),
        "transformers PhimoeConfig defaults (documented checkpoint microsoft/Phi-3.5-MoE-instruct); "
        "shared/TRANSFORMERS_NOTES.md"),
    "ibm-granite/granite-3.1-3b-a800m-instruct": ("granitemoe", dict(
        hidden_size=1536, intermediate_size=512, num_hidden_layers=32, num_attention_heads=24, num_key_value_heads=8,
        num_local_experts=40, num_experts_per_tok=8, vocab_size=49155, tie_word_embeddings=True),
        "config.json fields of ibm-granite/granite-3.1-3b-a800m-instruct quoted in code corpus id 71463455676"),
    "baidu/ERNIE-4.5-21B-A3B-PT": ("ernie4_5_moe", dict(
        hidden_size=2560, intermediate_size=12288, moe_intermediate_size=1536, num_hidden_layers=28,
        num_attention_heads=20, num_key_value_heads=4, moe_num_experts=64, moe_k=6, moe_num_shared_experts=2,
        moe_layer_start_index=1, moe_layer_end_index=27, moe_layer_interval=1, vocab_size=103424,
        tie_word_embeddings=True),
        "transformers Ernie4_5_MoeConfig defaults (documented checkpoint baidu/ERNIE-4.5-21B-A3B-PT)"),
    "openai/gpt-oss-20b": ("gpt_oss", dict(
        hidden_size=2880, intermediate_size=2880, num_hidden_layers=24, num_local_experts=32, num_experts_per_tok=4,
        num_attention_heads=64, num_key_value_heads=8, head_dim=64, vocab_size=201088, tie_word_embeddings=False),
        "config.json copy in code corpus id 14062900185; docs.nvidia.com Megatron-Bridge models/llm/gpt-oss"),
    "openai/gpt-oss-120b": ("gpt_oss", dict(
        hidden_size=2880, intermediate_size=2880, num_hidden_layers=36, num_local_experts=128, num_experts_per_tok=4,
        num_attention_heads=64, num_key_value_heads=8, head_dim=64, vocab_size=201088, tie_word_embeddings=False),
        "docs.nvidia.com Megatron-Bridge models/llm/gpt-oss (36 layers, 128 experts top-4); config copy of "
        "huggingface.co/openai/gpt-oss-120b/raw/main/config.json in code corpus id 71368259812"),
}
ALL_HUB = dict(HUB_MODELS)
SIZES = ("family", "num_layers", "moe_layers", "num_experts", "top_k", "hidden_size", "intermediate_size",
         "num_kv_heads", "head_dim", "vocab_size", "shared_intermediate_size")


def cited_config(repo_id):
    from transformers import AutoConfig

    model_type, fields, _ = CITED[repo_id]
    return AutoConfig.for_model(model_type, **fields)


def test_every_hub_model_is_cited():
    assert set(CITED) == set(ALL_HUB)
    assert all(name in PRESETS for name in ALL_HUB.values())


@pytest.mark.parametrize("repo_id", sorted(ALL_HUB))
def test_preset_matches_cited_config(repo_id):
    preset = PRESETS[ALL_HUB[repo_id]]
    from_config = get_adapter(cited_config(repo_id)).spec(preset.name, preset.dense_params)
    assert {k: getattr(preset, k) for k in SIZES} == {k: getattr(from_config, k) for k in SIZES}
    assert preset.kv_bytes_per_token() == from_config.kv_bytes_per_token()


@pytest.mark.parametrize("repo_id", sorted(ALL_HUB))
def test_preset_dense_part_matches_the_model(repo_id):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cited_config(repo_id))
    dense = sum(p.numel() for name, p in model.named_parameters() if ".experts." not in name)
    assert abs(PRESETS[ALL_HUB[repo_id]].dense_params / dense - 1) < 0.03, dense


def test_offered_models_have_an_adapter():
    for repo_id, name in HUB_MODELS.items():
        assert PRESETS[name].family in ADAPTERS, repo_id


# published total parameters (B): model cards and the sources above
PUBLISHED_TOTAL = {"mistralai/Mixtral-8x7B-Instruct-v0.1": 46.7, "Qwen/Qwen3.5-35B-A3B": 35,
                   "zai-org/GLM-4.5-Air": 106, "deepseek-ai/DeepSeek-V2-Lite-Chat": 15.7,
                   "microsoft/Phi-3.5-MoE-instruct": 41.9, "baidu/ERNIE-4.5-21B-A3B-PT": 21,
                   "openai/gpt-oss-20b": 20.9, "openai/gpt-oss-120b": 116.8}


def test_picker_lists_offered_models_with_sizes():
    from app.models import choices

    pairs = choices()
    assert [value for _, value in pairs] == ["demo", *HUB_MODELS]
    for label, repo_id in pairs[1:]:
        s = PRESETS[HUB_MODELS[repo_id]]
        expert = 3 * s.hidden_size * s.intermediate_size
        total, active = (s.dense_params + len(s.moe_layers) * n * expert for n in (s.num_experts, s.top_k))
        assert label == f"{repo_id} ({total / 1e9:.1f} B, {active / 1e9:.1f} B active)"
    for repo_id, published in PUBLISHED_TOTAL.items():
        assert abs(PRESETS[ALL_HUB[repo_id]].total_params / 1e9 / published - 1) < 0.05, repo_id
