"""The per-layer step record (LayerStep), the typed Snapshot, the split rule and calibration as a step."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from moepic_core import Engine
from moepic_core.layout import ADMITTED, HIT, MISS, LayerPlan
from moepic_core.models import load_spec
from moepic_core.runtime.snapshot import Snapshot
from moepic_core.runtime.step import LayerStep, Routing
from moepic_core.plan.trace import NO_GUESS, TraceRecorder

PROMPT = "the quick brown fox"


def capture_steps(engine) -> list[LayerStep]:
    """Every LayerStep the runtime emits from now on, in order."""
    steps, emit = [], engine.runtime._emit

    def keep(step):
        steps.append(step)
        emit(step)

    engine.runtime._emit = keep
    return steps


def router_choices(engine) -> tuple[dict, list]:
    """Per MoE layer, the router's top-k rows of every forward step, seen by hooks on the routers."""
    seen = {pos: [] for pos in range(engine.spec.num_moe_layers)}
    handles = [engine.adapter.moe_block(engine.model, layer).gate.register_forward_hook(
        lambda m, a, out, pos=pos: seen[pos].append(out[2].tolist())) for pos, layer in enumerate(engine.spec.moe_layers)]
    return seen, handles


def test_steps_carry_the_routing_and_sum_to_the_counters(tiny_models):
    folder = tiny_models["mixtral"]
    spec = load_spec(folder)
    engine = Engine.load(folder, device="cpu", split=0.5, cache_gb=0.3 * spec.store_bytes("none", "float32") / 1e9)
    steps = capture_steps(engine)
    seen, handles = router_choices(engine)
    engine.generate(engine.tokenizer(PROMPT)["input_ids"], 7, stop_at_eos=False)
    for h in handles:
        h.remove()
    L = spec.num_moe_layers
    assert len(steps) == 7 * L and [s.pos for s in steps] == list(range(L)) * 7  # one per layer per forward step
    for pos in range(L):
        mine = [s for s in steps if s.pos == pos]
        assert [list(map(list, s.routing.rows)) for s in mine] == seen[pos]
        assert not mine[0].routing.one_token and all(s.routing.one_token for s in mine[1:])  # prefill, 6 decodes
    snap = engine.snapshot()
    for pos, layer in enumerate(snap.layers):
        mine = [s for s in steps if s.pos == pos]
        assert layer.hits + layer.misses == sum(len(s.routing.experts) for s in mine)
        assert (layer.hits, layer.misses) == (sum(s.hits for s in mine), sum(s.misses for s in mine))
        assert layer.top_hits == layer.hits and layer.full_hits == 0  # split 0.5: every hit is a top hit
        assert layer.bytes_fetched == sum(s.moved_bytes for s in mine)
        assert layer.active == tuple(mine[-1].routing.experts)  # the live view: the last step's experts
        assert layer.prefetched == (mine[-1].guess or ())
    assert snap.layers[0].prefetched == ()  # the first MoE layer is never guessed
    assert all(len(layer.prefetched) == spec.top_k for layer in snap.layers[1:])
    decode = [s for s in steps if s.pos == 0 and s.routing.one_token]
    assert snap.totals.tokens == len(decode) == 6 and len(snap.history) == 6


def test_without_cache_or_prefetch_every_expert_crosses_the_link_whole(tiny_models):
    folder = tiny_models["qwen3_moe"]
    engine = Engine.load(folder, device="cpu", cache_gb=0, prefetch=False)
    steps = capture_steps(engine)
    engine.generate(engine.tokenizer(PROMPT)["input_ids"], 5, stop_at_eos=False)
    expert = engine.spec.expert_bytes("none", "float32")
    assert all(s.hits == 0 and s.misses == len(s.routing.experts) for s in steps)
    assert all(s.link_bytes == s.misses * expert and s.prefetch_bytes == 0 and s.guess is None for s in steps)
    t = engine.snapshot().totals
    assert t.bytes_fetched == t.misses * expert and t.prefetch_precision is None


def test_snapshot_json_round_trip_of_a_real_run(tiny_models):
    engine = Engine.load(tiny_models["qwen2_moe"], device="cpu", split=0.5, cache_gb=0.0004)
    engine.generate(engine.tokenizer(PROMPT)["input_ids"], 6, stop_at_eos=False)
    snap = engine.snapshot()
    data = json.loads(json.dumps(snap.to_json()))
    assert Snapshot.from_json(data) == snap
    assert data["layers"][1]["prefetched"] == list(snap.layers[1].prefetched) and data["budgets"]["simulated"]
    assert data["totals"]["tokens"] == 5 and [h["token"] for h in data["history"]] == [1, 2, 3, 4, 5]
    assert data["layout"] == {"source": "uniform", "prediction": {}} and data["mode"] == "simulated"


def test_recorder_keeps_decode_steps_in_router_order_and_pads_only_guesses():
    def step(pos, rows, guess=None):
        return LayerStep(pos, Routing.of(rows), 0, 0, False, guess)

    recorder = TraceRecorder(num_layers=2, top_k=2, guess_width=3, num_experts=8)
    for s in (step(0, [[1, 2], [3, 4]]), step(1, [[5, 6], [6, 7]]),  # prefill: not a trace row
              step(0, [[4, 1]]), step(1, [[7, 0]], guess=(0, 7, 2)),
              step(0, [[2, 3]]), step(1, [[3, 2]], guess=(2,)),
              step(0, [[5, 6]])):  # a token cut short: left out
        recorder.add(s)
    trace = recorder.trace()
    assert trace.experts.tolist() == [[[4, 1], [7, 0]], [[2, 3], [3, 2]]]
    assert trace.predicted.tolist() == [[[NO_GUESS] * 3, [0, 7, 2]], [[NO_GUESS] * 3, [2, NO_GUESS, NO_GUESS]]]
    assert trace.prediction_recall()[1] == pytest.approx((2 + 1) / 4) and np.isnan(trace.prediction_recall()[0])


@pytest.mark.parametrize("kind,bottom_on,miss_on,cpu_ok,staged,want", [
    (HIT, "link", "link", True, None, ((32, 64), None)),
    (HIT, "cpu", "link", True, None, (None, (32, 64))),
    (HIT, "cpu", "link", False, None, ((32, 64), None)),     # no CPU worker: the link
    (HIT, "cpu", "link", True, (32, 64), ((32, 64), None)),  # a prefetch staged it: used
    (ADMITTED, "cpu", "link", True, None, ((0, 32), (32, 64))),
    (ADMITTED, "link", "cpu", True, None, ((0, 64), None)),
    (MISS, "link", "cpu", True, None, (None, (0, 64))),
    (MISS, "link", "cpu", True, (0, 64), ((0, 64), None)),
    (MISS, "link", "link", True, None, ((0, 64), None)),
])
def test_split_rule(kind, bottom_on, miss_on, cpu_ok, staged, want):
    plan = LayerPlan(budget_bytes=1, split_ratio=0.5, slots=2, bottom_on=bottom_on, miss_on=miss_on)
    assert plan.top_rows(64) == 32
    rows = plan.segments(kind, 64, cpu_ok, staged)
    assert (rows.link, rows.cpu) == want


def test_whole_experts_have_no_bottom():
    plan = LayerPlan(budget_bytes=1, split_ratio=1.0, slots=2, bottom_on="cpu", miss_on="cpu")
    assert plan.top_rows(64) == 64
    assert plan.segments(HIT, 64, True).link is None and plan.segments(HIT, 64, True).cpu is None
    assert plan.segments(ADMITTED, 64, True).link == (0, 64)  # the admission copy crosses the link
    assert LayerPlan(budget_bytes=0, split_ratio=0.5, slots=0).top_rows(64) == 0


def test_calibration_is_a_step_of_the_first_reconfigure_that_needs_it(tiny_models, cache_dir):
    folder = tiny_models["olmoe"]
    store = load_spec(folder).store_bytes("none", "float32")
    engine = Engine.load(folder, device="cpu", split=0.5, cache_gb=0.3 * store / 1e9, cache_dir=cache_dir)
    assert engine._trace is None  # a given split needs no calibration
    with pytest.raises(RuntimeError, match="no calibration trace"):  # a layout never decodes to get one
        engine._layout(replace(engine.cfg, split=None), engine.budget)
    engine.generate(engine.tokenizer(PROMPT)["input_ids"], 5, stop_at_eos=False)
    before = engine.snapshot().totals
    engine.reconfigure(split="auto")
    assert engine.runtime.layout.source == "solver" and engine.calibrate().num_tokens > 0
    assert engine.snapshot().totals == before  # calibration decoded with counters of its own; none reset
