"""Bookkeeping invariants of the offloaded engine: counts, budgets, pools after cancellation."""
from __future__ import annotations

import threading

import pytest
import torch

from moepic_core import Engine
from moepic_core.models import load_spec
from moepic_core.plan.trace import NO_GUESS

PROMPT = "the quick brown fox"


def pool_mismatches(engine) -> list:
    """(layer, expert) whose slot bytes differ from the store's top rows."""
    rt = engine.runtime
    bad = []
    for pos in range(engine.spec.num_moe_layers):
        for expert, slot in rt.directory.cached(pos).items():
            want = rt.store.rows(pos, expert, 0, rt.pool.rows[pos])
            if not torch.equal(rt.pool.slot(pos, slot), want):
                bad.append((pos, expert))
    return bad


def count_activations(engine):
    """Hooks on the routers count each step's distinct experts per layer, independently of the engine."""
    counts = {"n": 0}

    def hook(module, args, output):
        counts["n"] += len(set(output[2].flatten().tolist()))

    handles = [engine.adapter.moe_block(engine.model, layer).gate.register_forward_hook(hook)
               for layer in engine.spec.moe_layers]
    return counts, handles


@pytest.mark.parametrize("policy", ["lcp", "lru", "lfu"])
def test_hits_plus_misses_equal_activations(tiny_models, policy):
    folder = tiny_models["mixtral"]
    spec = load_spec(folder)
    engine = Engine.load(folder, device="cpu", policy=policy, split=0.5,
                         cache_gb=0.3 * spec.store_bytes("none", "float32") / 1e9)
    counts, handles = count_activations(engine)
    ids = engine.tokenizer(PROMPT)["input_ids"]
    engine.generate(ids, 20, stop_at_eos=False)
    for h in handles:
        h.remove()
    per_layer = engine.snapshot().layers
    assert counts["n"] > 0
    assert sum(layer.hits + layer.misses for layer in per_layer) == counts["n"]
    assert pool_mismatches(engine) == []


@pytest.mark.parametrize("fraction,split", [(0.0, 1.0), (0.1, 0.25), (0.3, 0.5), (0.5, 1.0), (2.0, 1.0)])
def test_budget_never_exceeded(tiny_models, fraction, split):
    folder = tiny_models["qwen3_moe"]
    spec = load_spec(folder)
    cache_bytes = int(fraction * spec.store_bytes("none", "float32"))
    engine = Engine.load(folder, device="cpu", split=split, cache_gb=cache_bytes / 1e9)
    engine.generate(engine.tokenizer(PROMPT)["input_ids"], 8, stop_at_eos=False)
    rt = engine.runtime
    assert rt.pool.nbytes <= engine.budget.cache_bytes
    row_bytes = spec.row_bytes("none", "float32")
    for pos, plan in enumerate(rt.layout.layers):
        assert plan.slots * rt.pool.rows[pos] * row_bytes == plan.budget_bytes
        assert len(rt.directory.cached(pos)) <= plan.slots <= spec.num_experts
    assert sum(p.budget_bytes for p in rt.layout.layers) <= cache_bytes


def test_vram_budget_accounts_for_everything(tiny_models):
    folder = tiny_models["mixtral"]
    probe = Engine.load(folder, device="cpu", cache_gb=0)
    minimum = probe.budget.min_vram_bytes
    engine = Engine.load(folder, device="cpu", split=1.0, vram_gb=(minimum + 300_000) / 1e9)
    b = engine.budget
    assert b.cache_bytes == engine.budget.vram_bytes - minimum
    assert b.dense_bytes + b.kv_reserve_bytes + b.staging_bytes + b.workspace_bytes + engine.runtime.pool.nbytes \
        <= b.vram_bytes
    assert engine.runtime.staging.nbytes == b.staging_bytes


def test_pools_consistent_after_cancelled_generation(tiny_models):
    folder = tiny_models["olmoe"]
    spec = load_spec(folder)
    engine = Engine.load(folder, device="cpu", split=0.5, cache_gb=0.25 * spec.store_bytes("none", "float32") / 1e9)
    ids = engine.tokenizer(PROMPT)["input_ids"]
    want = engine.generate(ids, 12, stop_at_eos=False)

    stop = threading.Event()
    got = []
    for token in engine.tokens(ids, 50, stop_event=stop, stop_at_eos=False):
        got.append(token)
        if len(got) == 5:
            stop.set()
    assert got == want[:5]  # stopped between steps, after exactly 5 tokens
    assert pool_mismatches(engine) == []
    assert engine.runtime.staging.entries == {} or all(
        e.prefetched for e in engine.runtime.staging.entries.values())

    stream = engine.tokens(ids, 50, stop_at_eos=False)  # a consumer that walks away mid-stream
    next(stream), next(stream)
    stream.close()
    assert pool_mismatches(engine) == []
    assert engine.generate(ids, 12, stop_at_eos=False) == want  # and the next generation is still exact


def test_reconfigure_relayouts_without_reload(tiny_models):
    folder = tiny_models["mixtral"]
    spec = load_spec(folder)
    store = spec.store_bytes("none", "float32")
    engine = Engine.load(folder, device="cpu", split=1.0, cache_gb=0.25 * store / 1e9)
    ids = engine.tokenizer(PROMPT)["input_ids"]
    want = engine.generate(ids, 10, stop_at_eos=False)
    model_before = engine.model
    engine.reconfigure(cache_gb=0.5 * store / 1e9, split=0.5)
    assert engine.model is model_before
    layers = engine.snapshot().layers
    assert all(l.split_ratio == 0.5 for l in layers)
    assert all(l.slots == 8 for l in layers)  # half the bytes at half the rows: every expert's top fits
    assert pool_mismatches(engine) == []
    assert engine.generate(ids, 10, stop_at_eos=False) == want
    engine.reconfigure(cache_gb=0.0)
    assert all(l.slots == 0 and l.cached == (None,) * 8 for l in engine.snapshot().layers)
    assert engine.generate(ids, 10, stop_at_eos=False) == want


def test_snapshot_is_json_and_complete(tiny_models):
    import json

    engine = Engine.load(tiny_models["qwen2_moe"], device="cpu", split=0.5, cache_gb=0.0004)
    engine.generate(engine.tokenizer(PROMPT)["input_ids"], 6, stop_at_eos=False)
    snap = json.loads(json.dumps(engine.snapshot().to_json()))
    layer = snap["layers"][0]
    for key in ("budget_bytes", "split_ratio", "slots", "cached", "hits", "misses", "bytes_fetched",
                "prefetch_precision", "prefetch_recall", "active"):
        assert key in layer
    for key in ("tokens", "tokens_per_s", "hit_rate", "bytes_fetched"):
        assert key in snap["totals"]
    assert snap["totals"]["tokens"] == 5  # 6 steps: one prefill, five decode
    assert snap["device"] == "cpu" and snap["budgets"]["simulated"] is True
    assert len(snap["history"]) == 5
    # the first MoE layer is never guessed; later layers are
    assert layer["prefetch_precision"] is None and snap["layers"][1]["prefetch_precision"] is not None


def test_trace_records_decode_routing(tiny_models):
    engine = Engine.load(tiny_models["mixtral"], device="cpu", cache_gb=0)
    routed = []
    block = engine.adapter.moe_block(engine.model, 1)
    h = block.gate.register_forward_hook(lambda m, a, out: routed.append(out[2].tolist()))
    engine.start_trace()
    engine.generate(engine.tokenizer(PROMPT)["input_ids"], 9, stop_at_eos=False)
    trace = engine.stop_trace()
    h.remove()
    assert trace.experts.shape == (8, 3, 2)  # 8 decode steps, 3 MoE layers, top-2
    assert [row[0] for row in routed[1:]] == trace.experts[:, 1].tolist()
    assert (trace.predicted[:, 0] == NO_GUESS).all() and (trace.predicted[:, 1:] >= 0).all()
