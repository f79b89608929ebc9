"""Cost model by hand; the divide and conquer against the exact DP (random and Mixtral-shaped models);
the DP against brute force; policy choice; the solve CLI."""
import itertools
import json
from dataclasses import replace

import numpy as np
import pytest

from moepic_core.plan.costmodel import PLACEMENTS, CostModel, placement_index
from moepic_core.plan.planning import choose, model_cost, solve_layout
from moepic_core.presets import get_preset
from moepic_core.plan.solver import configs, exact_optimum, optimize, uniform
from moepic_core.plan.synthetic import synthetic_trace

LINK, LINK_PF = placement_index(False, False, False), placement_index(False, False, True)


def random_curve(rng, E, concave):
    if concave:  # decreasing increments
        inc = np.sort(rng.random(E))[::-1] + 1e-3
    else:        # any increments: flat stretches and late jumps
        inc = rng.random(E) ** 3 + 1e-3
    h = np.concatenate([[0], np.cumsum(inc)])
    return h / h[-1] * rng.uniform(0.7, 1.0)


def random_model(rng, L=None, E=None):
    """Random curves, admissions, recall, link and CPU speeds, prefetch chunks; ratios 1/4 .. 1."""
    L = L or int(rng.integers(2, 10))
    E = E or int(rng.integers(2, 7))
    M = 4
    k = int(rng.integers(1, min(E, 3) + 1))
    hit = np.stack([random_curve(rng, E, rng.random() < 0.5) for _ in range(L)])
    return CostModel(hit=hit, admit=(1 - hit) * rng.uniform(0, 1, size=(L, 1)), accuracy=rng.random(L) * rng.choice([0, 1]),
                     expert_bytes=int(rng.integers(10, 400)) * 10**6, top_k=k, bw=float(rng.choice([12, 25, 64])) * 1e6,
                     expert_ms=float(rng.uniform(0.05, 3)), dense_ms=float(rng.uniform(0.05, 1)),
                     ratios=np.arange(1, M + 1) / M, slot_units=np.arange(1, M + 1), unit_bytes=1,
                     cpu_bw=float(rng.choice([0, 20, 40, 80])) * 1e6, chunk_bytes=float(rng.choice([4e6, 16e6, np.inf])))


def used_units(cm, sol):
    return sum(c * int(cm.slot_units[m]) for c, m in zip(sol.slots, sol.split))


# --- the cost model by hand ---------------------------------------------------------------------

def one_layer(**kw):
    base = dict(hit=np.zeros((1, 5)), accuracy=np.zeros(1), expert_bytes=100 * 10**6, top_k=2, bw=25e6,
                expert_ms=0.25, dense_ms=0.5, cpu_bw=50e6, cpu_hop_ms=0.05)
    return CostModel(**{**base, **kw})


def test_layer_cost_by_hand_for_each_placement():
    # k = 2, S = 100 MB, link 25 MB/ms, CPU 50 MB/ms, c_e 0.25 ms, c_d 0.5 ms; h = 0.5, a = 0.25, r = 0.5.
    # per activation: top of hits .25 (GPU, from slot), tops of admitted .125 (link), bottoms
    # (.5 + .25) * .5 = .375, misses left out .25.
    cm = one_layer()
    cost = lambda b, m: cm.layer(0, 0.5, 0.25, 0.5, placement_index(b, m, False), cm.first_window)  # noqa: E731
    # all link: X = 2*100*(.125 + .375 + .25) = 150 MB -> 6 ms; GPU all 2*.25 = .5 ms, tops .25*2*.25 = .125
    # ms = .5 + .5 + (6 - .125) = 6.875
    x = cost(False, False)
    assert (x["ms"], x["bytes"], x["cpu_bytes"]) == pytest.approx((6.875, 150e6, 0))
    # bottoms on the CPU: X = 2*100*(.125 + .25) = 75 MB -> 3 ms; Y = 2*100*.375 = 75 MB -> 1.5 + .05 ms;
    # GPU 2*.25*(.25 + .375) = .3125 + (3 - .125) -> 3.1875; ms = .5 + max(3.1875, 1.55)
    x = cost(True, False)
    assert (x["ms"], x["bytes"], x["cpu_bytes"]) == pytest.approx((3.6875, 75e6, 75e6))
    # both on the CPU: X = 25 MB (admission copies) -> 1 ms; Y = 2*100*(.375 + .25) = 125 MB -> 2.5 + .05;
    # GPU 2*.25*(.25 + .125) = .1875 + (1 - .125); ms = .5 + max(1.0625, 2.55) = 3.05
    x = cost(True, True)
    assert (x["ms"], x["bytes"], x["cpu_bytes"]) == pytest.approx((3.05, 25e6, 125e6))
    # its window for the next layer: c_d + (moe - link time) = .5 + (2.55 - 1) = 2.05
    assert x["window"] == pytest.approx(2.05)


def test_prefetch_is_charged_for_wrong_guesses():
    # no cache, k = 2, S = 100 MB, all link: X = 200 MB (8 ms). Window 2 ms -> 50 MB arrive.
    # recall .5, g = k: right share .5 -> 25 MB useful. Left in the queue 150 MB.
    cm = one_layer(accuracy=np.array([0.5]), chunk_bytes=10e6)
    off = cm.layer(0, 0.0, 0.0, 1.0, LINK, 2.0)
    on = cm.layer(0, 0.0, 0.0, 1.0, LINK_PF, 2.0)
    # off: .5 + .5 + 8 = 9; on: on demand 175 MB + one wrong 10 MB chunk in flight * .5 = 5 MB -> 7.2 ms
    assert off["ms"] == pytest.approx(9.0) and on["ms"] == pytest.approx(0.5 + 0.5 + 7.2)
    assert on["bytes"] == pytest.approx(175e6 + 50e6 + 5e6)
    # FIFO (no chunks): the wrong half of the 150 MB still queued blocks the link: 175 + 75 MB -> 10 ms
    fifo = replace(cm, chunk_bytes=np.inf).layer(0, 0.0, 0.0, 1.0, LINK_PF, 2.0)
    assert fifo["ms"] == pytest.approx(0.5 + 0.5 + 10.0) and fifo["ms"] > off["ms"]
    # recall 0: prefetch only wastes the link
    blind = replace(cm, accuracy=np.zeros(1)).layer(0, 0.0, 0.0, 1.0, LINK_PF, 2.0)
    assert blind["ms"] > off["ms"]


def test_solver_turns_prefetch_on_only_where_recall_pays():
    L = 4
    hit = np.tile(np.linspace(0, 1, 5), (L, 1))
    cm = one_layer(hit=hit, accuracy=np.array([0.0, 0.0, 0.9, 0.9]), cpu_bw=50e6, ratios=np.array([1.0]),
                   slot_units=np.array([1]))
    sol = optimize(cm, 4)
    pf = [bool(PLACEMENTS[q, 2]) for q in sol.place]
    assert pf[:2] == [False, False] and pf[3]  # layer 3's predecessor can leave the link idle for it


# --- the divide and conquer against the exact DP -----------------------------------------------

def test_within_one_percent_of_exact_dp_on_60_random_instances():
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(60):
        cm = random_model(rng)
        units = int(rng.integers(0, cm.num_layers * cm.num_experts * 4 + 1))
        got, ref = optimize(cm, units), exact_optimum(cm, units)
        assert used_units(cm, got) <= units and used_units(cm, ref) <= units
        assert got.ms_per_token >= ref.ms_per_token * (1 - 1e-9)      # the DP is exact
        assert cm.evaluate(got.policy, got.slots, got.split, got.place)["ms_per_token"] == pytest.approx(got.ms_per_token)
        worst = max(worst, got.ms_per_token / ref.ms_per_token - 1)
    assert worst <= 0.01, worst


@pytest.mark.parametrize("quant, policy, cpu, experts", [("int4", "lru", 60, 3), ("none", "lcp-filtered", 40, 2),
                                                        ("none", "reuse", 60, 1), ("int4", "static", 40, 5)])
def test_within_one_percent_of_exact_dp_on_mixtral_shaped_models(quant, policy, cpu, experts):
    # 8 Mixtral layers, ratios in quarters (the DP is slow on 16 ratios), synthetic Mixtral routing
    spec = replace(get_preset("mixtral-8x7b"), num_layers=8, moe_layers=tuple(range(8)))
    cm = model_cost(spec, synthetic_trace(300, 8, 8, 2, seed=0), (policy,), bandwidth_gbps=25, cpu_gbps=cpu,
                    quant=quant)
    keep = np.array([3, 7, 11, 15])
    cm = replace(cm, ratios=cm.ratios[keep], slot_units=cm.slot_units[keep] // 4, unit_bytes=cm.unit_bytes * 4)
    units = experts * 8 * 4
    got, ref = optimize(cm, units), exact_optimum(cm, units)
    assert ref.ms_per_token * (1 - 1e-9) <= got.ms_per_token <= ref.ms_per_token * 1.01


def test_exact_dp_equals_brute_force():
    rng = np.random.default_rng(4)
    for _ in range(10):
        cm = replace(random_model(rng, L=int(rng.integers(1, 3)), E=int(rng.integers(1, 3))),
                     ratios=np.array([0.5, 1.0]), slot_units=np.array([1, 2]))
        cfg = configs(cm)
        units = int(rng.integers(0, cm.num_layers * cm.num_experts * 2 + 1))
        best = min(cm.evaluate(cfg.p[list(c)], cfg.C[list(c)], cfg.m[list(c)], cfg.q[list(c)])["ms_per_token"]
                   for c in itertools.product(range(len(cfg.C)), repeat=cm.num_layers) if cfg.units[list(c)].sum() <= units)
        assert exact_optimum(cm, units).ms_per_token == pytest.approx(best, rel=1e-12)


def test_budget_for_all_experts_caches_everything_whole():
    rng = np.random.default_rng(2)
    for _ in range(6):
        cm = replace(random_model(rng), cpu_bw=0.0)  # (a CPU path can win by sharing the compute)
        cm.hit[:, :, -1] = 1.0   # every expert cached: every activation hits
        cm.admit[:, :, -1] = 0.0
        sol = optimize(cm, cm.num_layers * cm.num_experts * 4 + 7)
        assert sol.slots == [cm.num_experts] * cm.num_layers
        assert sol.split == [len(cm.ratios) - 1] * cm.num_layers       # r = 1


def test_zero_budget_caches_nothing():
    cm = random_model(np.random.default_rng(3))
    assert optimize(cm, 0).slots == [0] * cm.num_layers
    assert exact_optimum(cm, 0).slots == [0] * cm.num_layers


def test_splitting_can_lose_and_can_win():
    # Concave curve, budget of k whole experts per layer, everything over the link: whole slots move fewer bytes.
    L, E, k = 4, 8, 2
    hit = np.tile(1 - (1 - np.arange(E + 1) / E) ** 2, (L, 1))
    cm = CostModel(hit=hit, accuracy=np.zeros(L), expert_bytes=352 * 10**6, top_k=k, bw=25e6, expert_ms=0.9,
                   dense_ms=0.25)
    whole = optimize(cm, L * k * 16)
    assert whole.split == [15] * L
    # One layer whose curve needs two slots before much hits (k = 2), one expert of budget: whole, one
    # slot saves 0.02 of the bytes; two half tops save 0.5 * 0.5.
    hit2 = np.r_[0.0, 0.02, 0.5, np.linspace(0.55, 1, E - 2)][None, :]
    cm2 = CostModel(hit=hit2, accuracy=np.zeros(1), expert_bytes=352 * 10**6, top_k=k, bw=25e6, expert_ms=0.9,
                    dense_ms=0.25)
    split = optimize(cm2, 16)
    assert split.slots == [2] and split.split == [7]                  # r = 8/16
    assert split.ms_per_token < uniform(cm2, 16).ms_per_token


# --- policy choice ------------------------------------------------------------------------------

def test_policy_chosen_per_model_or_per_layer_when_it_pays():
    # two policies; A hits well on even layers, B on odd ones: the mix wins by far
    L, E = 6, 4
    good, bad = np.linspace(0, 1, E + 1), np.linspace(0, 1, E + 1) ** 3
    hit = np.stack([[good if l % 2 == 0 else bad for l in range(L)], [bad if l % 2 == 0 else good for l in range(L)]])
    cm = CostModel(hit=hit, accuracy=np.zeros(L), expert_bytes=10**8, top_k=1, bw=25e6, expert_ms=0.2, dense_ms=0.3,
                   ratios=np.array([1.0]), slot_units=np.array([1]), policies=("A", "B"))
    sol, report = choose(cm, 2 * L)
    assert sol.policy == [0, 1] * (L // 2) and set(report) == {"A", "B"}
    # the same curves for both: one policy for the whole model
    same = replace(cm, hit=np.stack([hit[0], hit[0]]), admit=None)
    assert len(set(choose(same, 2 * L)[0].policy)) == 1


# --- over a ModelSpec ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mixtral_trace():
    return synthetic_trace(120, 32, 8, 2, seed=0)


@pytest.mark.parametrize("quant", ["none", "int4"])
def test_solve_layout_mixtral_within_budget(quant, mixtral_trace):
    spec = get_preset("mixtral-8x7b")
    for experts_per_layer in (0, 1, 2.5, 8):
        budget = int(experts_per_layer * 32 * spec.expert_bytes(quant))
        layout = solve_layout(spec, budget, bandwidth_gbps=25, cpu_gbps=40, trace=mixtral_trace, quant=quant)
        assert layout.source == "solver" and len(layout.layers) == 32
        assert layout.total_bytes <= budget
        p = layout.prediction
        assert set(p["baselines"]) == {"uniform_lru_no_split", "best_uniform_split", "transfer_only",
                                       "solver_no_split", "hybrid_whole_expert"}
        assert p["ms_per_token"] <= min(p["baselines"].values()) * (1 + 1e-9)
        assert p["policy"] in ("per-layer", *{plan.policy for plan in layout.layers})
        json.dumps(layout.to_dict())                                   # goes into engine.snapshot()
        if experts_per_layer == 0:
            assert all(x.slots == 0 for x in layout.layers)
        if experts_per_layer == 8:
            assert all(x.slots == 8 for x in layout.layers)  # r < 1 where the CPU shares the compute


def test_without_cpu_everything_goes_over_the_link(mixtral_trace):
    spec = get_preset("mixtral-8x7b")
    layout = solve_layout(spec, 40 * spec.expert_bytes(), bandwidth_gbps=25, cpu_gbps=0, trace=mixtral_trace)
    assert {(p.bottom_on, p.miss_on) for p in layout.layers} == {("link", "link")}
    assert "hybrid_whole_expert" not in layout.prediction["baselines"]


def test_exact_dp_entry_point_matches_on_small_spec(mixtral_trace):
    spec = replace(get_preset("mixtral-8x7b"), num_layers=4, moe_layers=tuple(range(4)))
    trace = synthetic_trace(80, 4, 8, 2, seed=1)
    budget = int(1.5 * 4 * spec.expert_bytes("int4"))
    kw = dict(bandwidth_gbps=25, cpu_gbps=40, trace=trace, policy="lru", quant="int4", prefetch_accuracy=0.6)
    a, b = solve_layout(spec, budget, **kw), solve_layout(spec, budget, exact=True, **kw)
    assert b.total_bytes <= budget
    assert b.prediction["ms_per_token"] <= a.prediction["ms_per_token"] <= b.prediction["ms_per_token"] * 1.01


def test_solve_cli_done_when(capsys):
    from moepic_core.cli.solve import main
    assert main(["--preset", "mixtral-8x7b", "--vram-gb", "12", "--quant", "int4", "--bandwidth-gbps", "25",
                 "--cpu-gbps", "60", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    b = out["baselines"]
    assert set(b) == {"uniform_lru_no_split", "best_uniform_split", "transfer_only", "solver_no_split",
                      "hybrid_whole_expert"}
    assert sum(x["budget_bytes"] for x in out["layers"]) <= out["cache_bytes"]
    assert out["ms_per_token"] <= 0.55 * b["transfer_only"] and out["ms_per_token"] <= b["hybrid_whole_expert"]
    assert {"layer", "budget_bytes", "split_ratio", "slots", "bottom_on", "miss_on", "prefetch", "policy",
            "hit_rate", "ms"} <= set(out["layers"][0])


def test_solve_cli_text_and_errors(tmp_path, capsys):
    from moepic_core.cli.solve import main
    path = tmp_path / "t.npz"
    spec = get_preset("deepseek-v2-lite")  # first decoder layer dense: MoE layers print as 1..26
    synthetic_trace(30, spec.num_moe_layers, spec.num_experts, spec.top_k, seed=2).save(path)
    assert main(["--preset", "deepseek-v2-lite", "--cache-gb", "2", "--trace", str(path), "--policy", "lru",
                 "--cpu-gbps", "30"]) == 0
    out = capsys.readouterr().out
    assert "transfer only" in out and "hybrid whole-expert" in out
    rows = [line.split()[0] for line in out.splitlines() if line.split() and line.split()[0].isdigit()]
    assert rows == [str(i) for i in range(1, 27)]
    assert main(["--preset", "nope", "--cache-gb", "4"]) == 2
    assert "choose one of" in capsys.readouterr().err
    assert main(["--preset", "mixtral-8x7b", "--cache-gb", "4", "--trace", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "26 MoE layers x 64 experts" in err
    assert main(["--preset", "mixtral-8x7b", "--cache-gb", "4", "--cpu-gbps", "-1"]) == 2
    assert "--cpu-gbps" in capsys.readouterr().err


def test_solve_measures_the_cpu_when_not_told(tmp_path, monkeypatch, capsys):
    from moepic_core.cli.solve import main
    from moepic_core.runtime import cpu_speed
    monkeypatch.setenv("MOEPIC_CACHE_DIR", str(tmp_path))
    path = tmp_path / "t.npz"
    spec = get_preset("olmoe-1b-7b")
    synthetic_trace(30, spec.num_moe_layers, spec.num_experts, spec.top_k, seed=2).save(path)
    args = ["--preset", "olmoe-1b-7b", "--cache-gb", "1", "--trace", str(path), "--policy", "lru",
            "--quant", "int4", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cpu_source"] == "measured here" and out["cpu_gbps"] > 0
    # the number is this machine's for an OLMoE int4 expert, kept per machine, and read back next time
    kept = json.loads((tmp_path / "cpu_speed.json").read_text())
    assert list(kept.values()) == [out["cpu_gbps"]] and "2048x1024|int4|float16" in next(iter(kept))
    monkeypatch.setattr(cpu_speed, "_measure", lambda *a: pytest.fail("measured twice"))
    assert main(args) == 0 and json.loads(capsys.readouterr().out)["cpu_gbps"] == out["cpu_gbps"]
