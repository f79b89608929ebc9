"""Solver against the exact DP on random instances, budget, monotonicity, the two extremes, speed."""
import json
import time

import numpy as np
import pytest

from moepic_core.costmodel import CostModel
from moepic_core.presets import get_preset
from moepic_core.solver import best_uniform, exact_optimum, optimize, solve_layout, uniform
from moepic_core.synthetic import synthetic_trace


def random_curve(rng, E, concave):
    if concave:  # decreasing increments
        inc = np.sort(rng.random(E))[::-1] + 1e-3
    else:        # any increments: flat stretches and late jumps
        inc = rng.random(E) ** 3 + 1e-3
    h = np.concatenate([[0], np.cumsum(inc)])
    return h / h[-1] * rng.uniform(0.7, 1.0)


def random_model(rng, L=None, E=None):
    L = L or int(rng.integers(2, 49))
    E = E or int(rng.integers(2, 7))
    M = 4  # ratios 1/4 .. 1
    k = int(rng.integers(1, min(E, 3) + 1))
    hit = np.stack([random_curve(rng, E, rng.random() < 0.5) for _ in range(L)])
    return CostModel(hit=hit, accuracy=rng.random(L) * rng.choice([0, 1]), expert_bytes=int(rng.integers(10, 400)) * 10**6,
                     top_k=k, bw=float(rng.choice([12, 25, 64])) * 1e6, expert_ms=float(rng.uniform(0.05, 3)),
                     dense_ms=float(rng.uniform(0.05, 1)), ratios=np.arange(1, M + 1) / M,
                     slot_units=np.arange(1, M + 1), unit_bytes=1)


def used_units(cm, sol):
    return sum(c * int(cm.slot_units[m]) for c, m in zip(sol.slots, sol.split))


def test_within_one_percent_of_exact_dp_on_60_random_instances():
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(60):
        cm = random_model(rng)
        units = int(rng.integers(0, cm.num_layers * cm.num_experts * 4 + 1))
        got, ref = optimize(cm, units), exact_optimum(cm, units)
        assert used_units(cm, got) <= units and used_units(cm, ref) <= units
        assert got.ms_per_token >= ref.ms_per_token * (1 - 1e-9)      # the DP is exact
        assert cm.evaluate(got.slots, got.split)["ms_per_token"] == pytest.approx(got.ms_per_token)
        worst = max(worst, got.ms_per_token / ref.ms_per_token - 1)
    assert worst <= 0.01, worst


def test_more_vram_never_worse():
    rng = np.random.default_rng(1)
    for _ in range(6):
        cm = random_model(rng, L=int(rng.integers(2, 16)))
        prev = np.inf
        for units in range(0, cm.num_layers * cm.num_experts * 4 + 1, max(1, cm.num_layers // 2)):
            ms = optimize(cm, units).ms_per_token
            assert ms <= prev * (1 + 1e-12), units
            prev = ms


def test_budget_for_all_experts_caches_everything_whole():
    rng = np.random.default_rng(2)
    for _ in range(10):
        cm = random_model(rng)
        cm.hit[:, -1] = 1.0   # every expert cached: every activation hits
        sol = optimize(cm, cm.num_layers * cm.num_experts * 4 + 7)
        assert sol.slots == [cm.num_experts] * cm.num_layers
        assert sol.split == [len(cm.ratios) - 1] * cm.num_layers       # r = 1


def test_zero_budget_caches_nothing():
    rng = np.random.default_rng(3)
    cm = random_model(rng)
    assert optimize(cm, 0).slots == [0] * cm.num_layers
    assert exact_optimum(cm, 0).slots == [0] * cm.num_layers


def test_splitting_can_lose_and_can_win():
    # Concave curve, budget of k whole experts per layer, no prefetch: whole slots move fewer bytes.
    L, E, k = 4, 8, 2
    hit = np.tile(1 - (1 - np.arange(E + 1) / E) ** 2, (L, 1))
    cm = CostModel(hit=hit, accuracy=np.zeros(L), expert_bytes=352 * 10**6, top_k=k, bw=25e6, expert_ms=0.9,
                   dense_ms=0.25)
    whole = optimize(cm, L * k * 16)
    assert whole.split == [15] * L
    assert whole.ms_per_token <= best_uniform(cm, L * k * 16).ms_per_token
    # One layer whose curve needs two slots before much hits (k = 2), one expert of budget: whole, one
    # slot saves 0.02 of the bytes; two half tops save 0.5 * 0.5. (With several alike layers, two whole
    # slots on half of them save as much: the split then wins only against a uniform whole layout.)
    hit2 = np.r_[0.0, 0.02, 0.5, np.linspace(0.55, 1, E - 2)][None, :]
    cm2 = CostModel(hit=hit2, accuracy=np.zeros(1), expert_bytes=352 * 10**6, top_k=k, bw=25e6, expert_ms=0.9,
                    dense_ms=0.25)
    split = optimize(cm2, 16)
    assert split.slots == [2] and split.split == [7]                  # r = 8/16
    assert split.ms_per_token < uniform(cm2, 16).ms_per_token


@pytest.mark.parametrize("quant", ["none", "int4"])
def test_solve_layout_mixtral_fast_and_within_budget(quant):
    spec = get_preset("mixtral-8x7b")
    trace = synthetic_trace(120, 32, 8, 2, seed=0)
    solve_layout(spec, 10**9, bandwidth_gbps=25, trace=trace, quant=quant)    # hit-rate curves, computed once
    for experts_per_layer in (0, 0.25, 1, 2.5, 4, 8):
        budget = int(experts_per_layer * 32 * spec.expert_bytes(quant))
        start = time.process_time()  # CPU time: other jobs on a shared machine do not count
        layout = solve_layout(spec, budget, bandwidth_gbps=25, trace=trace, quant=quant)
        assert time.process_time() - start < 1.0
        assert layout.source == "solver" and len(layout.layers) == 32
        assert layout.total_bytes <= budget
        p = layout.prediction
        assert p["ms_per_token"] <= p["baselines"]["best_uniform_split"] * (1 + 1e-9)
        assert set(p["baselines"]) == {"uniform_lru_no_split", "best_uniform_split"}
        json.dumps(layout.to_dict())                                   # goes into engine.snapshot()
        if experts_per_layer == 0:
            assert all(x.slots == 0 for x in layout.layers)
        if experts_per_layer == 8:
            assert all(x.slots == 8 and x.split_ratio == 1.0 for x in layout.layers)


def test_exact_dp_matches_on_small_spec():
    from moepic_core.solver import solve_exact_dp
    spec = get_preset("mixtral-8x7b")
    trace = synthetic_trace(80, 32, 8, 2, seed=1)
    budget = int(1.5 * 32 * spec.expert_bytes())
    a = solve_layout(spec, budget, bandwidth_gbps=25, trace=trace, prefetch_accuracy=0.6)
    b = solve_exact_dp(spec, budget, bandwidth_gbps=25, trace=trace, prefetch_accuracy=0.6)
    assert b.total_bytes <= budget
    assert b.prediction["ms_per_token"] <= a.prediction["ms_per_token"] <= b.prediction["ms_per_token"] * 1.01


def test_exact_dp_equals_brute_force():
    import itertools
    from moepic_core.solver import _configs
    rng = np.random.default_rng(4)
    for _ in range(12):
        cm = random_model(rng, L=int(rng.integers(1, 4)), E=int(rng.integers(1, 4)))
        C, m, u = _configs(cm)
        units = int(rng.integers(0, cm.num_layers * cm.num_experts * 4 + 1))
        best = min(cm.evaluate(C[list(p)], m[list(p)])["ms_per_token"]
                   for p in itertools.product(range(len(C)), repeat=cm.num_layers) if u[list(p)].sum() <= units)
        assert exact_optimum(cm, units).ms_per_token == pytest.approx(best, rel=1e-12)


def test_solve_cli_json(tmp_path, capsys):
    from moepic_core.solve import main
    path = tmp_path / "t.npz"
    synthetic_trace(60, 32, 8, 2, seed=2).save(path)
    assert main(["--preset", "mixtral-8x7b", "--vram-gb", "16", "--trace", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"layers", "ms_per_token", "baselines"} <= set(out)
    assert set(out["baselines"]) == {"uniform_lru_no_split", "best_uniform_split"}
    assert {"budget_bytes", "split_ratio", "slots", "hit_rate", "ms"} <= set(out["layers"][0])
    assert sum(x["budget_bytes"] for x in out["layers"]) <= out["cache_bytes"]
    assert main(["--preset", "mixtral-8x7b", "--cache-gb", "4", "--trace", str(path)]) == 0
    assert "uniform no split (LRU)" in capsys.readouterr().out
    assert main(["--preset", "nope", "--cache-gb", "4"]) == 2
    assert "choose one of" in capsys.readouterr().err
