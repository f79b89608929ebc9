"""The engine against transformers' own model on the same weights: greedy tokens identical and
last-step logits within 1e-5 (float32), for every family and cache configuration."""
from __future__ import annotations

import pytest
import torch

from moepic_core import Engine
from moepic_core.runtime.kernels import segment_forward
from moepic_core.runtime.quant import decode_expert
from moepic_core.testing import load_reference

from helpers import FAMILIES, check_engine_matches

PROMPT = "hello world, the experts are cached"

CONFIGS = {
    "all-resident": dict(cache_gb=1.0),
    "quarter-split-0.5": dict(split=0.5),  # cache_gb set below to ~25% of the experts
    "no-cache": dict(cache_gb=0.0),
}


def quarter_cache_gb(spec):
    return 0.25 * spec.store_bytes("none", "float32") / 1e9


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
    totals = snap.totals
    if config == "all-resident":
        assert totals.misses == 0 and totals.bytes_fetched == 0
        assert all(c == "full" for layer in snap.layers for c in layer.cached)
    elif config == "no-cache":
        assert totals.hits == 0 and totals.bytes_fetched > 0
    else:
        assert all(layer.split_ratio == 0.5 for layer in snap.layers)
        assert totals.top_hits > 0 and totals.misses > 0 and totals.full_hits == 0


class DequantisedExperts(torch.nn.Module):
    """transformers' eager experts loop over the store's dequantised weights, multiplying with the
    activations quantized as the kernels do (torch ops; the native kernels are what is tested)."""

    def __init__(self, store, pos, act_fn):
        super().__init__()
        self.store, self.pos, self.act_fn = store, pos, act_fn  # act_fn(gate) * up, transformers' own

    def forward(self, hidden_states, top_k_index, top_k_weights):
        spec, out = self.store.spec, torch.zeros_like(hidden_states)
        mask = torch.nn.functional.one_hot(top_k_index, spec.num_experts).permute(2, 1, 0)
        for e in torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero().flatten().tolist():
            k_pos, tok = torch.where(mask[e])
            rows = self.store.rows(self.pos, e, 0, spec.intermediate_size)
            gate, up, down = decode_expert(rows, spec.hidden_size, self.store.quant, self.store.dtype, torch.float32)
            y = segment_forward(hidden_states[tok], gate, up, down, self.act_fn, quantized=True)
            out.index_add_(0, tok, (y * top_k_weights[tok, k_pos, None]).to(out.dtype))
        return out


def dequantised_reference(folder, engine):
    """transformers' model with every expert replaced by the engine store's dequantised weights."""
    ref = load_reference(folder)
    for pos, layer in enumerate(engine.spec.moe_layers):
        block = ref.model.layers[layer].mlp
        block.experts = DequantisedExperts(engine.runtime.store, pos, block.experts.act_fn)
    return ref


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_quantized_engine_matches_dequantised_transformers(tiny_models, family, quant):
    folder = tiny_models[family]
    from moepic_core.models import load_spec

    engine = Engine.load(folder, device="cpu", dtype="float32", quant=quant, split=0.5, dense_quant="none",
                         cache_gb=quarter_cache_gb(load_spec(folder)) / 2)
    ref = dequantised_reference(folder, engine)
    ids = engine.tokenizer(PROMPT, return_tensors="pt").input_ids
    check_engine_matches(engine, ref, ids)
    # the dequantised weights are close to the originals, not equal (the quantizer did something)
    spec, store = engine.spec, engine.runtime.store
    orig = load_reference(folder).model.layers[spec.moe_layers[0]].mlp.experts.down_proj[3]
    deq = decode_expert(store.rows(0, 3, 0, spec.intermediate_size), spec.hidden_size, quant, "float32",
                        torch.float32)[2]
    rel = ((deq - orig).norm() / orig.norm()).item()
    assert 0 < rel < (0.01 if quant == "int8" else 0.15)
