"""Simulator: hit counts equal hand-computed ones for every policy; Belady bounds the online policies."""
import json

import numpy as np
import pytest

from moepic_core.cache import CacheDirectory, make_policy
from moepic_core.layout import Layout, LayerPlan, uniform_layout
from moepic_core.plan.planning import solve_layout
from moepic_core.presets import get_preset
from moepic_core.plan.replay import activations, replay_counts, replay_hits
from moepic_core.cli.simulate import main as simulate_main
from moepic_core.plan.simulate import simulate
from moepic_core.plan.synthetic import synthetic_trace
from moepic_core.plan.trace import RoutingTrace

# One layer, 5 experts, top-2, 3 slots:
TOKENS = [[0, 1], [2, 3], [0, 4], [0, 1], [2, 4], [0, 3]]
# LRU  t0 0,1 -> free slots.  t1 2 -> free; 3 evicts 0 (0,1 tie at t0 -> lowest id).
#      t2 0 evicts 1 (t0); 4 evicts 2 (2,3 tie at t1).  t3 0 hit, 1 evicts 3 (t1).
#      t4 4 hit, 2 evicts 0 (0,1 tie at t3).  t5 0 evicts 1 (t3), 3 evicts 2 (2,4 tie at t4)    -> 2 hits
# LFU  as LRU to t2, then cache {3,0,4}; t3 0 hit, 1 evicts 3 (count 1, t1 < 4's t2);
#      t4 4 hit, 2 evicts 1 (count 2 < 0's 3); t5 0 hit, 3 evicts 2 (2,4 tie)                 -> 3 hits
# LCP  (rho .25, tau 128: P ~ count, slightly decayed) same choices as LFU; every newcomer's
#      P >= the victim's (t1: 1 >= 0.989, t4: 2 >= 1.978, t5: 2 >= 1.978)                     -> 3 hits
# lcp-filtered: the same, every newcomer admitted anyway                                       -> 3 hits
# static, profile = counts (0:4, others 2): pinned {0, 1, 2}: hits 2,1,1,2,1,1                -> 8 hits
# Belady (next uses 0: 0,2,3,5  1: 0,3  2: 1,4  3: 1,5  4: 2,4), keeps the soonest next use:
#      t0 - ; t1 keep 0,1,2; t2 0 hit, keep 0,1,2; t3 0,1 hit; t4 2 hit; t5 0 hit              -> 5 hits
# (static beats Belady here only because its profile is this very trace and it starts warm.)
EXPECTED = {"lru": 2, "lfu": 3, "lcp": 3, "lcp-filtered": 3, "static": 8, "belady": 5}
# Admissions (misses given a slot): every miss for the always-admitting lru (12 - 2), lfu, lcp and here
# lcp-filtered (12 - 3); none for static. Belady: t0 0, 1 (free slots); t1 keeps 2, not 3; t2 keeps 2
# over 4 (next uses tie at t4: lower id); t4, t5 newcomers never come back -> 3.
ADMITTED = {"lru": 10, "lfu": 9, "lcp": 9, "lcp-filtered": 9, "static": 0, "belady": 3}


def hand_trace():
    return RoutingTrace(np.array(TOKENS, np.int16)[:, None, :], num_experts=5)


def profile(trace):
    return {"profile": trace.counts().tolist()}


@pytest.mark.parametrize("policy", sorted(EXPECTED))
def test_hand_computed_hits_and_admissions(policy):
    params = profile(hand_trace()) if policy == "static" else {}
    hits, admitted = replay_counts(hand_trace(), [[3]], policy, **params)
    assert (hits.tolist(), admitted.tolist()) == ([[EXPECTED[policy]]], [[ADMITTED[policy]]])


def test_static_without_profile_serves_each_half_with_the_others_counts():
    # halves t0-t2 and t3-t5 both count 0 twice, the rest once: pinned {0, 1, 2} either way -> 4 + 4 hits.
    assert replay_hits(hand_trace(), [3], "static").tolist() == [8]
    # a profile that pins {3, 4} (2 slots): hits at t1 (3), t2 (4), t4 (4), t5 (3) -> 4
    assert replay_hits(hand_trace(), [2], "static", profile=[[0, 0, 0, 9, 9]]).tolist() == [4]


def directory_replay(trace, slots, policy):
    """The reference: the engine's CacheDirectory, one access at a time."""
    d = CacheDirectory(slots, policy)
    d.warm_start()
    hits, admitted = np.zeros(trace.num_layers, int), np.zeros(trace.num_layers, int)
    for token in trace.experts.tolist():
        for l, experts in enumerate(token):
            a = d.access(l, experts)
            hits[l] += len(a.hits)
            admitted[l] += len(a.admitted)
        d.step()
    return hits, admitted


@pytest.mark.parametrize("seed", range(4))
def test_vectorised_replay_equals_the_directory(seed):
    rng = np.random.default_rng(seed)
    L, E, k = 3, int(rng.integers(3, 9)), int(rng.integers(1, 4))
    tr = RoutingTrace(rng.integers(0, E, size=(50, L, k)).astype(np.int16), num_experts=E)  # repeats allowed
    names = ["lru", "lfu", "lcp", "lcp-filtered", "reuse", "static"]
    for name in names + ["per-layer"]:
        params = {"layers": names[seed:seed + L]} if name == "per-layer" else {}
        params.update(profile(tr) if name in ("static", "per-layer") else {})
        slots = rng.integers(0, E + 1, size=L)
        hits, admitted = replay_counts(tr, [slots], name, **params)
        ref = directory_replay(tr, list(slots), make_policy(name, L, E, **params))
        assert hits[0].tolist() == ref[0].tolist() and admitted[0].tolist() == ref[1].tolist(), name


def test_two_slots_k2_every_admitting_policy_keeps_the_last_pair():
    # With C = k = 2 the cache always holds the previous token's pair (the only eviction candidates
    # are its experts), so a hit is an expert shared with the previous token: only t3 shares one (0, with t2) -> 1.
    for policy in ("lru", "lfu"):
        assert replay_hits(hand_trace(), [2], policy).tolist() == [1]


def test_zero_and_full_cache():
    tr = hand_trace()
    assert replay_hits(tr, [0], "lru").tolist() == [0]
    # 5 slots: only the 5 first-time misses (every expert's first use), the rest hit
    assert replay_hits(tr, [5], "lru").tolist() == [12 - 5]
    assert activations(tr).tolist() == [12]


@pytest.mark.parametrize("seed", range(6))
def test_belady_bounds_online_policies(seed):
    rng = np.random.default_rng(seed)
    E, k = int(rng.integers(3, 9)), int(rng.integers(1, 3))
    ex = np.stack([np.stack([rng.choice(E, k, replace=False) for _ in range(3)]) for _ in range(80)])
    tr = RoutingTrace(ex.astype(np.int16), num_experts=E)
    for c in range(0, E + 1):
        oracle = replay_hits(tr, [c] * 3, "belady")
        for policy in ("lcp", "lcp-filtered", "lru", "lfu", "reuse"):
            assert (oracle >= replay_hits(tr, [c] * 3, policy)).all(), (policy, c)


def test_split_hits_are_top_hits_and_bytes_by_hand():
    spec = get_preset("mixtral-8x7b")
    tr = synthetic_trace(60, 32, 8, 2, seed=3)
    S = spec.expert_bytes()
    plan_half = LayerPlan(budget_bytes=2 * S // 2, split_ratio=0.5, slots=2, prefetch=False)
    plan_full = LayerPlan(budget_bytes=S, split_ratio=1.0, slots=1, prefetch=False)
    layout = Layout([plan_half, plan_full] * 16)
    rep = simulate(tr, spec, layout, policy="lru")
    hits = replay_hits(tr, [2, 1] * 16, "lru")
    acts = activations(tr)
    for l, x in enumerate(rep["layers"]):
        assert x["top_hits"] + x["full_hits"] == hits[l]
        assert x["top_hits"] + x["full_hits"] + x["misses"] == acts[l]
        r = layout.layers[l].split_ratio
        assert (x["full_hits"] == 0) == (r < 1)
        # everything over the link, no prefetch: a hit fetches its bottom (1 - r) S, a miss the whole S
        expect = (hits[l] * (1 - r) * S + (acts[l] - hits[l]) * S) / tr.num_tokens
        assert x["bytes_per_token"] == pytest.approx(expect, rel=1e-9)
        assert x["cpu_bytes_per_token"] == 0 and x["layer"] == l
    assert rep["hit_rate"] == pytest.approx(hits.sum() / acts.sum())
    assert rep["full_hit_rate"] == pytest.approx(hits[1::2].sum() / acts.sum())


def test_cpu_placement_bytes_by_hand():
    # bottoms and misses on the CPU: the link carries only the admitted misses' tops (r S each), the
    # CPU reads the bottoms of hits and admitted misses ((1 - r) S) and the misses left out (S).
    spec = get_preset("mixtral-8x7b")
    tr = synthetic_trace(60, 32, 8, 2, seed=4)
    S = spec.expert_bytes()
    plan = LayerPlan(budget_bytes=3 * S // 4, split_ratio=0.25, slots=3, bottom_on="cpu", miss_on="cpu",
                     prefetch=False, policy="lcp-filtered")
    rep = simulate(tr, spec, Layout([plan] * 32), policy="lru", cpu_gbps=40)
    hits, admitted = replay_counts(tr, [[3] * 32], "lcp-filtered")
    acts = activations(tr)
    for l, x in enumerate(rep["layers"]):
        h, a = hits[0, l], admitted[0, l]
        assert x["policy"] == "lcp-filtered" and x["admitted"] == a
        assert x["bytes_per_token"] == pytest.approx(a * 0.25 * S / tr.num_tokens, rel=1e-9)
        cpu = ((h + a) * 0.75 * S + (acts[l] - h - a) * S) / tr.num_tokens
        assert x["cpu_bytes_per_token"] == pytest.approx(cpu, rel=1e-9)


def test_auto_with_split_auto_never_slower_than_uniform_lru_without_split():
    spec = get_preset("mixtral-8x7b")
    tr = synthetic_trace(200, 32, 8, 2, seed=5)
    S, rb = spec.expert_bytes("int4"), spec.row_bytes("int4")
    for cpu in (0.0, 40.0):
        for experts_per_layer in (0.5, 1, 2, 3, 5):
            budget = int(experts_per_layer * 32 * S)
            kw = dict(bandwidth_gbps=25, cpu_gbps=cpu, quant="int4")
            solved = solve_layout(spec, budget, trace=tr, policy="auto", **kw)
            auto = simulate(tr, spec, solved, policy="auto", **kw)
            lru = simulate(tr, spec, uniform_layout(budget, 32, 1.0, spec.intermediate_size, rb, 8), policy="lru", **kw)
            assert auto["ms_per_token"] <= lru["ms_per_token"] * (1 + 1e-9), (cpu, experts_per_layer)
            # replaying the layout on its own calibration trace gives back the solver's prediction
            assert auto["ms_per_token"] == pytest.approx(solved.prediction["ms_per_token"], rel=1e-9)


def test_cli_json(tmp_path, capsys):
    spec = get_preset("olmoe-1b-7b")
    path = tmp_path / "t.npz"
    synthetic_trace(40, spec.num_moe_layers, spec.num_experts, spec.top_k, seed=1).save(path)
    for split in ("0.5", "auto"):
        assert simulate_main(["--trace", str(path), "--preset", "olmoe-1b-7b", "--cache-gb", "1",
                              "--policy", "lru", "--split", split, "--cpu-gbps", "40", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert {"hit_rate", "full_hit_rate", "bytes_per_token", "cpu_bytes_per_token", "ms_per_token",
                "layers"} <= set(out)
        assert {"hit_rate", "bytes_per_token", "ms", "miss_on", "bottom_on", "policy"} <= set(out["layers"][0])
        assert out["cache_bytes"] <= 1e9
    assert simulate_main(["--trace", str(tmp_path / "missing.npz"), "--preset", "olmoe-1b-7b",
                          "--cache-gb", "1"]) == 2
    assert "not found" in capsys.readouterr().err
    assert simulate_main(["--trace", str(path), "--preset", "olmoe-1b-7b", "--vram-gb", "0.1"]) == 2
    assert "minimum" in capsys.readouterr().err


def test_trace_of_another_model_is_refused_in_one_line(capsys):
    demo = "assets/demo-model/routing_trace.npz"
    assert simulate_main(["--trace", demo, "--preset", "mixtral-8x7b", "--cache-gb", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "5 MoE layers x 8 experts" in err and "32 MoE layers x 8 experts" in err and "--resample-trace" in err
    assert simulate_main(["--trace", demo, "--preset", "olmoe-1b-7b", "--cache-gb", "1"]) == 2
    assert "64 experts" in capsys.readouterr().err
    assert simulate_main(["--trace", demo, "--preset", "mixtral-8x7b", "--cache-gb", "10", "--resample-trace",
                          "--split", "1", "--policy", "lru", "--cpu-gbps", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [x["layer"] for x in out["layers"]] == list(range(32))
