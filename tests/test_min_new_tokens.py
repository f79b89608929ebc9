"""generation_config.min_new_tokens: the engine bans the end-of-reply tokens before that many new tokens,
as transformers' generate does, and gives the same tokens."""
from __future__ import annotations

import torch

from moepic_core import Engine
from moepic_core.testing import load_reference


def test_min_new_tokens_matches_transformers(tiny_models, cache_dir):
    folder = tiny_models["mixtral"]
    engine = Engine.load(folder, device="cpu", dtype="float32", cache_gb=0, cache_dir=cache_dir)
    prompt = engine.tokenizer("hello world")["input_ids"]
    first = engine.generate(prompt, 1)[0]
    engine.model.generation_config.eos_token_id = first  # the greedy first token now ends the reply at once
    eos = sorted(engine._eos_ids())
    assert engine.generate(prompt, 12) == [first]
    engine.model.generation_config.min_new_tokens = 5
    got = engine.generate(prompt, 12)
    assert len(got) >= 5 and not set(got[:5]) & set(eos)

    model = load_reference(folder)
    ids = torch.tensor([prompt])
    expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                              min_new_tokens=5, eos_token_id=eos, pad_token_id=eos[0])[0, len(prompt):].tolist()
    assert got == expected
    assert engine.generate(prompt, 12, min_new_tokens=0) == [first]  # an explicit argument wins
