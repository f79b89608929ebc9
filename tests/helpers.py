"""What several test modules share: the tiny families and the check of the engine against transformers.
Tests import from here, never from one another (nor from conftest)."""
from __future__ import annotations

import torch

FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe")
NEW_TOKENS = 24


def reference_tokens(ref, ids) -> list[int]:
    """transformers' greedy NEW_TOKENS tokens after `ids` (no end of sequence)."""
    out = ref.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def check_engine_matches(engine, ref, ids) -> None:
    """The engine's greedy tokens equal transformers' and its last-step logits are within 1e-5 (float32)."""
    want = reference_tokens(ref, ids)
    got = engine.generate(ids[0], NEW_TOKENS, stop_at_eos=False)
    assert got == want
    full = torch.cat([ids, torch.tensor([got])], dim=1)
    with torch.no_grad():
        ours = engine.model(full).logits[0, -1]
        theirs = ref(full).logits[0, -1]
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0), (ours - theirs).abs().max()
