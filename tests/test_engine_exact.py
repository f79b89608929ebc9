"""The engine against transformers' own model on the same weights: greedy tokens identical and
last-step logits within 1e-5 (float32), for every family and cache configuration."""
from __future__ import annotations

import pytest
import torch

from moepic_core import Engine
from moepic_core.quant import decode_rows
from moepic_core.testing import load_reference

from conftest import FAMILIES

NEW_TOKENS = 24
PROMPT = "hello world, the experts are cached"

CONFIGS = {
    "all-resident": dict(cache_gb=1.0),
    "quarter-split-0.5": dict(split=0.5),  # cache_gb set below to ~25% of the experts
    "no-cache": dict(cache_gb=0.0),
}


def reference_tokens(ref, ids):
    out = ref.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def quarter_cache_gb(spec):
    return 0.25 * spec.store_bytes("none", "float32") / 1e9


def check_engine_matches(engine, ref, ids):
    want = reference_tokens(ref, ids)
    got = engine.generate(ids[0], NEW_TOKENS, stop_at_eos=False)
    assert got == want
    full = torch.cat([ids, torch.tensor([got])], dim=1)
    with torch.no_grad():
        ours = engine.model(full).logits[0, -1]
        theirs = ref(full).logits[0, -1]
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0), (ours - theirs).abs().max()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_engine_matches_transformers(tiny_models, family, config):
    folder = tiny_models[family]
    ref = load_reference(folder)
    options = dict(CONFIGS[config])
    if config.startswith("quarter"):
        from moepic_core.models import load_spec

        options["cache_gb"] = quarter_cache_gb(load_spec(folder))
    engine = Engine.load(folder, device="cpu", dtype="float32", **options)
    ids = engine.tokenizer(PROMPT, return_tensors="pt").input_ids
    check_engine_matches(engine, ref, ids)
    snap = engine.snapshot()
    totals = snap["totals"]
    if config == "all-resident":
        assert totals["misses"] == 0 and totals["bytes_fetched"] == 0
        assert all(c == "full" for layer in snap["layers"] for c in layer["cached"])
    elif config == "no-cache":
        assert totals["hits"] == 0 and totals["bytes_fetched"] > 0
    else:
        assert all(layer["split_ratio"] == 0.5 for layer in snap["layers"])
        assert totals["top_hits"] > 0 and totals["misses"] > 0 and totals["full_hits"] == 0


def dequantised_reference(folder, engine):
    """transformers' model with every expert replaced by the engine store's dequantised weights."""
    ref = load_reference(folder)
    store, spec = engine.runtime.store, engine.spec
    for pos, layer in enumerate(spec.moe_layers):
        experts = ref.model.layers[layer].mlp.experts
        for e in range(spec.num_experts):
            w = decode_rows(store.rows(pos, e, 0, spec.intermediate_size), spec.hidden_size, store.quant,
                            store.dtype, torch.float32)
            with torch.no_grad():
                experts.gate_up_proj[e] = torch.cat([w[:, 0], w[:, 1]], dim=0)
                experts.down_proj[e] = w[:, 2].t()
    return ref


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_quantized_engine_matches_dequantised_transformers(tiny_models, family, quant):
    folder = tiny_models[family]
    from moepic_core.models import load_spec

    engine = Engine.load(folder, device="cpu", dtype="float32", quant=quant, split=0.5,
                         cache_gb=quarter_cache_gb(load_spec(folder)) / 2)
    ref = dequantised_reference(folder, engine)
    ids = engine.tokenizer(PROMPT, return_tensors="pt").input_ids
    check_engine_matches(engine, ref, ids)
    # the dequantised weights are close to the originals, not equal (the quantizer did something)
    orig = load_reference(folder).model.layers[engine.spec.moe_layers[0]].mlp.experts.down_proj
    deq = ref.model.layers[engine.spec.moe_layers[0]].mlp.experts.down_proj
    rel = ((deq - orig).norm() / orig.norm()).item()
    assert 0 < rel < (0.01 if quant == "int8" else 0.15)
