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


def tiny_config(family: str, vocab_size: int = 320, **overrides):
    """A small config of `family` (mixtral, qwen2_moe, qwen3_moe, olmoe); sizes are overridable."""
    import transformers as tf

    common = dict(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.1,
                  bos_token_id=0, eos_token_id=0, pad_token_id=0, tie_word_embeddings=False)
    if family == "mixtral":
        cfg = dict(common, intermediate_size=128, num_local_experts=8, num_experts_per_tok=2)
        cls = tf.MixtralConfig
    elif family == "qwen2_moe":
        cfg = dict(common, intermediate_size=128, moe_intermediate_size=64, shared_expert_intermediate_size=96,
                   num_experts=8, num_experts_per_tok=2, decoder_sparse_step=1, mlp_only_layers=[],
                   norm_topk_prob=False)
        cls = tf.Qwen2MoeConfig
    elif family == "qwen3_moe":
        cfg = dict(common, intermediate_size=128, moe_intermediate_size=64, num_experts=8, num_experts_per_tok=2,
                   decoder_sparse_step=1, mlp_only_layers=[1], norm_topk_prob=True, head_dim=16)
        cls = tf.Qwen3MoeConfig
    elif family == "olmoe":
        cfg = dict(common, intermediate_size=64, num_experts=8, num_experts_per_tok=2)
        cls = tf.OlmoeConfig
    else:
        raise ValueError(f"no tiny config for family {family!r}")
    cfg.update(overrides)
    return cls(**cfg)


def make_tiny_model(family: str, folder: str | Path, seed: int = 0, dtype=None, **overrides) -> Path:
    """Build a seeded random `family` model, save weights + tokenizer to `folder`, return the folder."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = tiny_config(family, **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(folder)
    make_tiny_tokenizer(folder, vocab_size=config.vocab_size)
    return folder


def load_reference(folder: str | Path, dtype=None):
    """transformers' own model from `folder`, eager experts, eval mode (the exactness reference)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or torch.float32, experts_implementation="eager")
    return model.eval()
