"""Tiny seeded MoE models of each supported family, for tests and benchmarks. No network.

`make_tiny_model(family, folder)` builds a random model from a config, saves it with
`save_pretrained` (per-expert checkpoint keys, as on the hub) and a tiny byte-level BPE tokenizer
with a chat template, and returns the folder.
"""
from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_CORPUS = (
    "the quick brown fox jumps over the lazy dog. experts are offloaded to host memory and cached on the device. "
    "a mixture of experts routes every token to a few experts; the router picks them. "
    "hello world, how are you today? i am fine, thank you. what is the time? it is late. "
)


def make_tiny_tokenizer(folder: str | Path, vocab_size: int = 320):
    """Train a byte-level BPE on a fixed text; save it (with a chat template) into `folder`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   chat_template=CHAT_TEMPLATE)
    fast.save_pretrained(folder)
    return fast


_ROUTED = dict(intermediate_size=128, moe_intermediate_size=64, num_experts_per_tok=2)  # dense MLP 128, experts 64
_MLA = dict(num_key_value_heads=4, kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16)


def _tiny_family(family: str) -> tuple[str, dict]:
    """(transformers config class name, its small settings) of `family`."""
    families = {
        "mixtral": ("MixtralConfig", dict(intermediate_size=128, num_local_experts=8, num_experts_per_tok=2)),
        "qwen2_moe": ("Qwen2MoeConfig", dict(_ROUTED, shared_expert_intermediate_size=96,
                                             num_experts=8, decoder_sparse_step=1, mlp_only_layers=[],
                                             norm_topk_prob=False)),
        "qwen3_moe": ("Qwen3MoeConfig", dict(_ROUTED, num_experts=8, decoder_sparse_step=1,
                                             mlp_only_layers=[1], norm_topk_prob=True, head_dim=16)),
        "olmoe": ("OlmoeConfig", dict(intermediate_size=64, num_experts=8, num_experts_per_tok=2)),
        # hybrid attention: Gated DeltaNet layers around one full-attention layer (generate needs one)
        "qwen3_5_moe": ("Qwen3_5MoeTextConfig", dict(
            _ROUTED, shared_expert_intermediate_size=48, num_experts=8, head_dim=16,
            layer_types=["linear_attention", "full_attention", "linear_attention"], linear_key_head_dim=16,
            linear_value_head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4)),
        # group-limited greedy routing over 2 groups of 4 experts; MLA needs as many KV heads as heads here
        "deepseek_v2": ("DeepseekV2Config", dict(
            **_ROUTED, **_MLA, n_routed_experts=8, n_shared_experts=1, first_k_dense_replace=1, q_lora_rank=None,
            topk_method="group_limited_greedy", n_group=2, topk_group=1, routed_scaling_factor=1.5)),
        "deepseek_v3": ("DeepseekV3Config", dict(
            **_ROUTED, **_MLA, n_routed_experts=8, n_shared_experts=1, first_k_dense_replace=1, q_lora_rank=24,
            n_group=2, topk_group=1, norm_topk_prob=True, routed_scaling_factor=2.5)),
        "glm4_moe": ("Glm4MoeConfig", dict(_ROUTED, n_routed_experts=8, n_shared_experts=1, first_k_dense_replace=1,
                                           head_dim=16, n_group=1, topk_group=1, attention_bias=True,
                                           routed_scaling_factor=1.5)),
        "phimoe": ("PhimoeConfig", dict(intermediate_size=64, num_local_experts=8, num_experts_per_tok=2)),
        "granitemoe": ("GraniteMoeConfig", dict(intermediate_size=64, num_local_experts=8, num_experts_per_tok=2,
                                                embedding_multiplier=12.0, logits_scaling=6.0, residual_multiplier=0.22,
                                                attention_multiplier=0.0625)),
        "ernie4_5_moe": ("Ernie4_5_MoeConfig", dict(_ROUTED, moe_num_experts=8, moe_k=2, moe_num_shared_experts=1,
                                                    moe_layer_start_index=1, use_bias=False)),
        "gpt_oss": ("GptOssConfig", dict(intermediate_size=64, num_local_experts=8, num_experts_per_tok=2, head_dim=16,
                                         sliding_window=8,
                                         layer_types=["sliding_attention", "full_attention", "sliding_attention"])),
    }
    if family not in families:
        raise ValueError(f"no tiny config for family {family!r}; known: {', '.join(families)}")
    return families[family]


def tiny_config(family: str, vocab_size: int = 320, **overrides):
    """A small config of `family` (a model_type MoEpic supports); sizes are overridable. "qwen3_5_moe_vl" is
    the hub's conditional-generation config of Qwen3.5-MoE: the text config above plus a tiny vision tower."""
    import transformers as tf

    common = dict(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.1,
                  bos_token_id=0, eos_token_id=0, pad_token_id=0, tie_word_embeddings=False)
    if family == "qwen3_5_moe_vl":
        vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=4,
                      temporal_patch_size=2, spatial_merge_size=1, num_position_embeddings=16)
        text = tiny_config("qwen3_5_moe", vocab_size, **overrides).to_dict()
        return tf.Qwen3_5MoeConfig(text_config=text, vision_config=vision, tie_word_embeddings=False)
    class_name, settings = _tiny_family(family)
    return getattr(tf, class_name)(**{**common, **settings, **overrides})


def _randomize_routing_biases(model, generator) -> None:
    """Routers' score-correction biases start at zero; give them values so the tests exercise them."""
    import torch

    with torch.no_grad():
        for name, tensor in [*model.named_buffers(), *model.named_parameters()]:
            if name.endswith("e_score_correction_bias"):
                tensor.copy_(0.05 * torch.randn(tensor.shape, generator=generator))


def make_tiny_model(family: str, folder: str | Path, seed: int = 0, dtype=None, fused: bool = False,
                    **overrides) -> Path:
    """Build a seeded random `family` model, save weights + tokenizer to `folder`, return the folder.
    `fused` saves transformers' in-memory layout (experts as one `gate_up_proj`/`down_proj` per layer,
    as Qwen3.5's hub checkpoints are) instead of per-expert keys."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = tiny_config(family, **overrides)
    torch.manual_seed(seed)
    auto = AutoModelForImageTextToText if hasattr(config, "vision_config") else AutoModelForCausalLM
    model = auto.from_config(config)
    _randomize_routing_biases(model, torch.Generator().manual_seed(seed))
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(folder, save_original_format=not fused)
    make_tiny_tokenizer(folder, vocab_size=config.get_text_config().vocab_size)
    return folder


def load_reference(folder: str | Path, dtype=None):
    """transformers' own model from `folder`, eager experts, eval mode (the exactness reference)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or torch.float32, experts_implementation="eager")
    return model.eval()


def fake_snapshot(layers: int, experts: int, tokens: int = 5):
    """A hand-made Snapshot (no engine) for the panels' and the CLI's tests: every layer split at 0.5
    with 2 slots, experts cached full/top/not in turn, 3 hits (2 full, 1 top) and 1 miss each;
    `tokens` decode steps at 9 tok/s, hit rate 0.5 (full 0.3, top 0.2)."""
    from .budget import Budget
    from .runtime.snapshot import LayerSnapshot, Snapshot
    from .runtime.stats import TokenRecord, Totals

    rows = tuple(LayerSnapshot(
        layer=l, budget_bytes=1000 * (l + 1), split_ratio=0.5, slots=2, bottom_on="link", miss_on="link",
        prefetch=True, cached=tuple(("full", "top", None)[e % 3] for e in range(experts)), active=(0, 1),
        prefetched=(1, 2), hits=3, misses=1, top_hits=1, full_hits=2, bytes_fetched=10, prefetch_bytes=0,
        prefetch_wasted_bytes=0, prefetch_dropped_bytes=0, cpu_bytes=0, prefetch_precision=0.5,
        prefetch_recall=None) for l in range(layers))
    history = tuple(TokenRecord(token=t + 1, hit_rate=0.5, top_hit_rate=0.2, full_hit_rate=0.3, bytes=5, cpu_bytes=0,
                                tokens_per_s=9.0) for t in range(tokens))
    totals = Totals(tokens=tokens, tokens_per_s=9.0, hit_rate=0.75, top_hits=layers, full_hits=2 * layers,
                    hits=3 * layers, misses=layers, bytes_fetched=10 * layers, bytes_per_token=2.0,
                    cpu_bytes_per_token=0.0, effective_bandwidth_gbps=0.1, prefetch_precision=None,
                    prefetch_recall=0.5)
    budgets = Budget(cache_bytes=10, dense_bytes=5, kv_reserve_bytes=1, staging_bytes=1, workspace_bytes=0,
                     vram_bytes=None, simulated=True)
    return Snapshot(model="m", family="mixtral", device="cpu", cpu_mode=True, mode="simulated", kernels="torch",
                    dtype="float32", quant="none", policy="lcp", num_layers=layers, num_experts=experts, top_k=2,
                    intermediate_size=64, expert_bytes=4096, budgets=budgets, layout_source="uniform", prediction={},
                    layers=rows, totals=totals, history=history)
