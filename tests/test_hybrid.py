"""Hybrid execution: segments placed on the CPU worker (from the host store) and over the link, as the
layer plans say, summed exactly; prefetches in chunks that a wrong guess drops before they move."""
from __future__ import annotations

import threading

import pytest
import torch

from moepic_core import Engine
from moepic_core.runtime.pool import Transfer
from moepic_core.runtime.kernels import ExpertKernel
from moepic_core.layout import Layout, plan_layer
from moepic_core.runtime.prefetch import LinkQueue
from moepic_core.testing import load_reference

from helpers import FAMILIES

PROMPT = "hello world, the experts are cached"


def placed_layout(engine, ratio: float, experts: float, **rules) -> Layout:
    spec = engine.spec
    rb = spec.row_bytes(engine.cfg.quant, engine.dtype)
    budget = int(experts * spec.expert_bytes(engine.cfg.quant, engine.dtype))
    return Layout([plan_layer(budget, ratio, spec.intermediate_size, rb, spec.num_experts, **rules)
                   for _ in spec.moe_layers], source="test")


def check_against_transformers(engine, folder, tokens=12):
    ref = load_reference(folder)
    ids = engine.tokenizer(PROMPT, return_tensors="pt").input_ids
    want = ref.generate(ids, max_new_tokens=tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    got = engine.generate(ids[0], tokens, stop_at_eos=False)
    assert got == want[0, ids.shape[1]:].tolist()
    full = torch.cat([ids, torch.tensor([got])], dim=1)
    with torch.no_grad():
        ours, theirs = engine.model(full).logits[0, -1], ref(full).logits[0, -1]
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0), (ours - theirs).abs().max()


@pytest.mark.parametrize("family", FAMILIES)
def test_cpu_and_device_segments_sum_exactly(tiny_models, family, monkeypatch):
    folder = tiny_models[family]
    engine = Engine.load(folder, device="cpu", dtype="float32", cache_gb=0.0)
    engine.runtime.configure(placed_layout(engine, 0.5, 2, bottom_on="cpu", miss_on="cpu", prefetch=False), "lru", {})
    threads = set()
    segment = ExpertKernel.segment

    def spy(self, x, rows, bias=None):
        threads.add(threading.current_thread().name.split("_")[0])
        return segment(self, x, rows, bias)

    monkeypatch.setattr(ExpertKernel, "segment", spy)
    engine.reset_stats()
    check_against_transformers(engine, folder)
    totals = engine.snapshot().totals
    assert totals.hits > 0 and totals.misses > 0
    # tops came from the slots on the "device" thread, bottoms and misses from the CPU worker
    assert threads == {"MainThread", "moepic-cpu"}
    layers = engine.snapshot().layers
    assert all(layer.cpu_bytes > 0 for layer in layers)
    # admitted misses still cross the link for their tops; nothing else does
    expert = engine.spec.expert_bytes("none", "float32")
    assert 0 < totals.bytes_fetched <= totals.misses * expert / 2


def test_placement_per_layer_and_fewer_link_bytes(tiny_models):
    folder = tiny_models["olmoe"]
    link = Engine.load(folder, device="cpu", dtype="float32", cache_gb=0.0, split=0.5, prefetch=False)
    link.runtime.configure(placed_layout(link, 0.5, 2), "lru", {})
    hybrid = Engine.load(folder, device="cpu", dtype="float32", cache_gb=0.0, split=0.5, prefetch=False)
    layout = placed_layout(hybrid, 0.5, 2, bottom_on="cpu", miss_on="cpu")
    layout.layers[0] = placed_layout(hybrid, 0.5, 2).layers[0]  # layer 0 stays on the link
    hybrid.runtime.configure(layout, "lru", {})
    ids = link.tokenizer(PROMPT)["input_ids"]
    assert link.generate(ids, 12, stop_at_eos=False) == hybrid.generate(ids, 12, stop_at_eos=False)
    a, b = link.snapshot(), hybrid.snapshot()
    assert a.totals.hits == b.totals.hits  # same policy, same routing: same cache decisions
    assert b.layers[0].cpu_bytes == 0 and b.layers[0].bytes_fetched == a.layers[0].bytes_fetched
    for la, lb in zip(a.layers[1:], b.layers[1:]):
        assert lb.cpu_bytes > 0 and lb.bytes_fetched < la.bytes_fetched


def test_link_queue_drops_a_wrong_guess_before_it_moves():
    transfer = Transfer(torch.device("cpu"))
    queue = LinkQueue(transfer, chunk_bytes=64, per_pump=1)
    src_a, src_b = torch.arange(256, dtype=torch.uint8).view(16, 16), torch.full((16, 16), 7, dtype=torch.uint8)
    dst_a, dst_b = torch.zeros_like(src_a), torch.zeros_like(src_b)
    queue.add("a", dst_a, src_a)  # 4 chunks of 4 rows (64 bytes)
    queue.add("b", dst_b, src_b)
    assert queue.pump() == [("a", 64)]  # one chunk a pump on the CPU, FIFO
    assert torch.equal(dst_a[:4], src_a[:4]) and dst_a[4:].eq(0).all()
    _, dropped = queue.drop("b")  # the router said b was wrong: none of it moved
    assert dropped == 256 and dst_b.eq(0).all()
    _, moved = queue.finish("a")  # a is needed now: the rest goes at once
    assert moved == 192 and torch.equal(dst_a, src_a) and queue.pump() == []


def test_prefetch_counts_moved_dropped_and_wasted_bytes(tiny_models):
    engine = Engine.load(tiny_models["mixtral"], device="cpu", dtype="float32", cache_gb=0.0, split=0.5)
    engine.runtime.configure(placed_layout(engine, 0.5, 1), "lru", {})
    ids = engine.tokenizer(PROMPT)["input_ids"]
    engine.reset_stats()
    engine.generate(ids, 24, stop_at_eos=False)
    layers = engine.snapshot().layers
    assert sum(layer.prefetch_bytes for layer in layers[1:]) > 0
    for layer in layers:
        assert layer.prefetch_wasted_bytes <= layer.prefetch_bytes
    assert layers[0].prefetch_bytes == 0  # nothing guesses the first MoE layer


def test_staging_reuses_the_least_recently_released_buffer():
    from moepic_core.runtime.pool import Staging

    staging, transfer = Staging(3, 4, 8, torch.device("cpu")), Transfer(torch.device("cpu"))
    rows = torch.ones(4, 8, dtype=torch.uint8)
    a, b = staging.fetch((0, 1), rows, 0, transfer), staging.fetch((0, 2), rows, 0, transfer)
    staging.release((0, 2))
    staging.release((0, 1))
    # buffer 2 was never used, then b's, then a's: a new fetch takes the one released longest ago
    assert [staging.fetch((1, e), rows, 0, transfer).buffer for e in range(3)] == [2, b.buffer, a.buffer]
