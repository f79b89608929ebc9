"""Engine + solver: the default layout comes from the solver and a calibration trace; re-solving on
a new budget needs no reload; every per-layer mix of ratios stays exact."""
from __future__ import annotations

import time

import pytest
import torch

from moepic_core import Engine
from moepic_core.runtime.calibrate import trace_path
from moepic_core.config import EngineConfig
from moepic_core.models import load_spec
from moepic_core.plan.simulate import simulate
from moepic_core.testing import load_reference

from helpers import check_engine_matches


def test_default_layout_is_solved_and_exact(tiny_models, cache_dir):
    folder = tiny_models["mixtral"]
    store = load_spec(folder).store_bytes("none", "float32")
    engine = Engine.load(folder, device="cpu", cache_gb=0.3 * store / 1e9, cache_dir=cache_dir)
    layout = engine.runtime.layout
    assert layout.source == "solver"
    assert layout.total_bytes <= 0.3 * store
    snap = engine.snapshot()
    pred = snap.prediction
    assert pred["ms_per_token"] > 0
    assert set(pred["baselines"]) == {"uniform_lru_no_split", "best_uniform_split", "transfer_only", "solver_no_split"}
    # the engine has no CPU path yet: every layer over the link; the policy auto chose is the one running
    assert {(p.bottom_on, p.miss_on) for p in layout.layers} == {("link", "link")}
    name, params = layout.policy("")
    assert (engine.runtime.policy_name, name) == (name, engine.runtime.directory.policy.name)
    assert snap.policy == f"auto: {name}" if name != "per-layer" else snap.policy.startswith("auto: per layer")
    # the prediction is the simulator's replay of the calibration trace through that layout and policy
    sim = simulate(engine.calibrate(), engine.spec, layout, policy=name, bandwidth_gbps=pred["bandwidth_gbps"],
                   dtype=engine.dtype)
    assert sim["ms_per_token"] == pytest.approx(pred["ms_per_token"], rel=1e-9)
    assert all(l.predicted_hit_rate is not None for l in snap.layers)
    assert engine.snapshot().totals.tokens == 0  # calibration decoding is not counted
    path = trace_path(engine)
    assert path.exists()
    ids = engine.tokenizer("hello world, the experts are cached", return_tensors="pt").input_ids
    check_engine_matches(engine, load_reference(folder), ids)

    mtime = path.stat().st_mtime_ns
    again = Engine.load(folder, device="cpu", cache_gb=0.3 * store / 1e9, cache_dir=cache_dir)
    assert path.stat().st_mtime_ns == mtime  # the saved calibration is reused
    assert [p.slots for p in again.runtime.layout.layers] == [p.slots for p in layout.layers]


def test_mixed_ratios_per_layer_are_exact(tiny_models):
    from moepic_core.layout import Layout, plan_layer

    folder = tiny_models["qwen2_moe"]
    engine = Engine.load(folder, device="cpu", cache_gb=0)
    spec = engine.spec
    rb = spec.row_bytes("none", "float32")
    # I = 64: halves are the only split (chunks of 32 neurons); 1.5 experts of budget a layer
    plans = [plan_layer(3 * spec.expert_bytes("none", "float32") // 2, r, spec.intermediate_size, rb, 8)
             for r in (0.5, 1.0, 0.5)]
    engine.runtime.configure(Layout(plans, source="test"))
    assert [p.slots for p in plans] == [3, 1, 3]
    ids = engine.tokenizer("the quick brown fox", return_tensors="pt").input_ids
    check_engine_matches(engine, load_reference(folder), ids)


def test_reconfigure_resolves_quickly_without_reload(tiny_models, cache_dir):
    folder = tiny_models["olmoe"]
    store = load_spec(folder).store_bytes("none", "float32")
    engine = Engine.load(folder, device="cpu", cache_gb=0.2 * store / 1e9, cache_dir=cache_dir)
    minimum = engine.budget.min_vram_bytes
    model = engine.model
    before = [p.budget_bytes for p in engine.runtime.layout.layers]
    start = time.perf_counter()
    engine.reconfigure(vram_gb=(minimum + 0.6 * store) / 1e9)
    elapsed = time.perf_counter() - start
    after = engine.runtime.layout
    assert engine.model is model and after.source == "solver"
    assert sum(p.budget_bytes for p in after.layers) > sum(before)
    assert after.total_bytes <= 0.6 * store + 1
    assert elapsed < 5  # generous on a shared machine; the app's goal is < 1 s
    engine.reconfigure(split=0.5)
    assert {p.split_ratio for p in engine.runtime.layout.layers} == {0.5}
    engine.reconfigure(split="auto")
    assert engine.runtime.layout.source == "solver"


def test_static_policy_pins_the_profiled_experts(tiny_models, cache_dir):
    folder = tiny_models["mixtral"]
    store = load_spec(folder).store_bytes("none", "float32")
    engine = Engine.load(folder, device="cpu", policy="static", split=1.0, cache_gb=0.25 * store / 1e9,
                         cache_dir=cache_dir)
    counts = engine.calibrate().counts()
    for pos in range(engine.spec.num_moe_layers):
        cached = set(engine.runtime.directory.cached(pos))
        ranked = sorted(range(8), key=lambda e: (-counts[pos][e], e))
        assert cached == set(ranked[:len(cached)]) and len(cached) == 2
    engine.generate(engine.tokenizer("hello")["input_ids"], 10, stop_at_eos=False)
    for pos in range(engine.spec.num_moe_layers):  # nothing admitted or evicted
        assert set(engine.runtime.directory.cached(pos)) == set(
            sorted(range(8), key=lambda e: (-counts[pos][e], e))[:2])
    assert torch.equal(engine.runtime.pool.slot(0, 0), engine.runtime.store.rows(
        0, engine.runtime.directory.cached(0) and min(engine.runtime.directory.cached(0),
                                                      key=engine.runtime.directory.cached(0).get), 0, 128))


def test_without_prefetch_the_solver_gets_no_recall(tiny_models, cache_dir, tmp_path):
    import shutil

    from moepic_core.plan.synthetic import synthetic_trace

    folder = shutil.copytree(tiny_models["mixtral"], tmp_path / "model")
    spec = load_spec(folder)
    trace = synthetic_trace(60, spec.num_moe_layers, spec.num_experts, spec.top_k, seed=0)
    assert trace.prediction_recall()[1:].min() > 0     # guesses recorded: a recall the solver must not get
    trace.save(folder / "routing_trace.npz")           # shipped beside the model: no recording
    store = spec.store_bytes("none", "float32")
    engine = Engine.load(folder, device="cpu", cache_gb=0.3 * store / 1e9, cache_dir=cache_dir, prefetch=False,
                         policy="lru")
    pred = engine.snapshot().prediction
    assert pred["prefetch_accuracy"] == 0.0
    assert engine.snapshot().policy == "lru" and engine.runtime.policy_name == "lru"


def test_one_budget_for_engine_and_solve(tiny_models):
    # the engine's budget and solve's come from budget.plan_budget: the same cache share of a VRAM budget
    from moepic_core.budget import plan_budget
    from moepic_core.presets import get_preset
    from moepic_core.cli.cli_args import resolve_model

    folder = tiny_models["olmoe"]
    spec = load_spec(folder)
    vram = plan_budget(spec, dtype="float32", vram_bytes=10**9).min_vram_bytes + 12345
    cfg = EngineConfig(model=str(folder), vram_gb=vram / 1e9, device="cpu", dtype="float32", cpu_mode="simulated",
                       quant="none")  # Engine.load resolves the default "auto" before it asks for a budget
    engine_budget = Engine._budget(cfg, spec, "float32", torch.device("cpu"))
    assert engine_budget.cache_bytes == 12345 and engine_budget.staging_bytes == 2 * 2 * spec.expert_bytes("none", "float32")

    class Args:
        preset, model, vram_gb, cache_gb, quant, dtype = "mixtral-8x7b", None, 24.0, None, "none", "float16"
    mixtral = get_preset("mixtral-8x7b")
    _, cli_budget = resolve_model(Args)
    assert cli_budget == plan_budget(mixtral, vram_bytes=24 * 10**9)
    assert cli_budget.staging_bytes == 2 * mixtral.top_k * mixtral.expert_bytes()   # 2(k + extra), as the engine
