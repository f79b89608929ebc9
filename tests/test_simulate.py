"""Simulator: hit counts equal hand-computed ones for every policy; Belady bounds the online policies."""
import json

import numpy as np
import pytest

from moepic_core.layout import Layout, LayerPlan
from moepic_core.presets import get_preset
from moepic_core.replay import activations, replay_hits
from moepic_core.simulate import main as simulate_main
from moepic_core.simulate import simulate
from moepic_core.synthetic import synthetic_trace
from moepic_core.trace import RoutingTrace

# One layer, 5 experts, top-2, 3 slots:
TOKENS = [[0, 1], [2, 3], [0, 4], [0, 1], [2, 4], [0, 3]]
# LRU  t0 0,1 -> free slots.  t1 2 -> free; 3 evicts 0 (0,1 tie at t0 -> lowest id).
#      t2 0 evicts 1 (t0); 4 evicts 2 (2,3 tie at t1).  t3 0 hit, 1 evicts 3 (t1).
#      t4 4 hit, 2 evicts 0 (0,1 tie at t3).  t5 0 evicts 1 (t3), 3 evicts 2 (2,4 tie at t4)    -> 2 hits
# LFU  as LRU to t2, then cache {3,0,4}; t3 0 hit, 1 evicts 3 (count 1, t1 < 4's t2);
#      t4 4 hit, 2 evicts 1 (count 2 < 0's 3); t5 0 hit, 3 evicts 2 (2,4 tie)                 -> 3 hits
# LCP  (rho .25, tau 128: P ~ count, slightly decayed) same choices as LFU; every newcomer's
#      P >= the victim's (t1: 1 >= 0.989, t4: 2 >= 1.978, t5: 2 >= 1.978)                     -> 3 hits
# static, profile = counts (0:4, others 2): pinned {0, 1, 2}: hits 2,1,1,2,1,1                -> 8 hits
# Belady (next uses 0: 0,2,3,5  1: 0,3  2: 1,4  3: 1,5  4: 2,4), keeps the soonest next use:
#      t0 - ; t1 keep 0,1,2; t2 0 hit, keep 0,1,2; t3 0,1 hit; t4 2 hit; t5 0 hit              -> 5 hits
# (static beats Belady here only because its profile is this very trace and it starts warm.)
EXPECTED = {"lru": 2, "lfu": 3, "lcp": 3, "static": 8, "belady": 5}


def hand_trace():
    return RoutingTrace(np.array(TOKENS, np.int16)[:, None, :], num_experts=5)


@pytest.mark.parametrize("policy", sorted(EXPECTED))
def test_hand_computed_hits(policy):
    assert replay_hits(hand_trace(), [3], policy).tolist() == [EXPECTED[policy]]


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
        for policy in ("lcp", "lru", "lfu"):
            assert (oracle >= replay_hits(tr, [c] * 3, policy)).all(), (policy, c)


def test_split_hits_are_top_hits_and_bytes_by_hand():
    spec = get_preset("mixtral-8x7b")
    tr = synthetic_trace(60, 32, 8, 2, seed=3)
    S = spec.expert_bytes()
    plan_half = LayerPlan(budget_bytes=2 * S // 2, split_ratio=0.5, slots=2)
    plan_full = LayerPlan(budget_bytes=S, split_ratio=1.0, slots=1)
    layout = Layout([plan_half, plan_full] * 16)
    rep = simulate(tr, spec, layout, policy="lru", prefetch_accuracy=0.0)
    hits = replay_hits(tr, [2, 1] * 16, "lru")
    acts = activations(tr)
    for l, x in enumerate(rep["layers"]):
        assert x["top_hits"] + x["full_hits"] == hits[l]
        assert x["top_hits"] + x["full_hits"] + x["misses"] == acts[l]
        r = layout.layers[l].split_ratio
        assert (x["full_hits"] == 0) == (r < 1)
        # no prefetch: a hit fetches its bottom (1 - r) S, a miss the whole S
        expect = (hits[l] * (1 - r) * S + (acts[l] - hits[l]) * S) / tr.num_tokens
        assert x["bytes_per_token"] == pytest.approx(expect, rel=1e-9)
    assert rep["hit_rate"] == pytest.approx(hits.sum() / acts.sum())
    assert rep["full_hit_rate"] == pytest.approx(hits[1::2].sum() / acts.sum())


def test_cli_json(tmp_path, capsys):
    spec = get_preset("olmoe-1b-7b")
    path = tmp_path / "t.npz"
    synthetic_trace(40, spec.num_moe_layers, spec.num_experts, spec.top_k, seed=1).save(path)
    for split in ("0.5", "auto"):
        assert simulate_main(["--trace", str(path), "--preset", "olmoe-1b-7b", "--cache-gb", "1",
                              "--policy", "lru", "--split", split, "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert {"hit_rate", "full_hit_rate", "bytes_per_token", "ms_per_token", "layers"} <= set(out)
        assert {"hit_rate", "bytes_per_token", "ms"} <= set(out["layers"][0])
        assert out["cache_bytes"] <= 1e9
    assert simulate_main(["--trace", str(tmp_path / "missing.npz"), "--preset", "olmoe-1b-7b",
                          "--cache-gb", "1"]) == 2
    assert "not found" in capsys.readouterr().err
    assert simulate_main(["--trace", str(path), "--preset", "olmoe-1b-7b", "--vram-gb", "0.1"]) == 2
    assert "minimum" in capsys.readouterr().err
