"""Cache policies on hand-written sequences; every expected value is worked out in the comments.

Convention: for each token, `access` each layer, then `step()` (the clock counts tokens from 0).
"""
import pytest

from moepic_core.cache import POLICIES, POLICY_CHOICES, CacheDirectory, make_policy


def replay(policy, slots, steps):
    """One layer; `steps` is a list of expert lists. Returns (hits, misses, evicted per step, final map)."""
    d = CacheDirectory([slots], policy)
    hits = misses = 0
    evictions = []
    for experts in steps:
        a = d.access(0, experts)
        hits += len(a.hits)
        misses += len(a.misses)
        evictions.append(a.evicted)
        d.step()
    return hits, misses, evictions, d.cached(0)


def test_registry_and_unknown_name():
    assert set(POLICIES) == {"lcp", "lcp-filtered", "lru", "lfu", "reuse", "static", "per-layer"}
    assert POLICY_CHOICES[0] == "auto" and "per-layer" not in POLICY_CHOICES
    with pytest.raises(ValueError, match="lcp, lcp-filtered, lfu, lru, per-layer, reuse, static"):
        make_policy("fifo", 1, 4)


def test_lru_victim_and_ties():
    p = make_policy("lru", 1, 4)
    for e in (0, 1, 2, 0):          # t0: e0, t1: e1, t2: e2, t3: e0  -> last = {0: 3, 1: 1, 2: 2, 3: never}
        p.touch(0, e)
        p.step()
    assert p.victim(0, [0, 1, 2]) == 1        # least recent of the three
    assert p.victim(0, [0, 1, 2, 3]) == 3     # never touched is least recent of all
    p.touch(0, 2)                             # t4: e1 and e2 together -> both last = 4
    p.touch(0, 1)
    assert p.victim(0, [1, 2]) == 1           # tie -> lowest id


def test_lfu_victim_ties_least_recent_then_id():
    p = make_policy("lfu", 1, 3)
    for experts in ([0, 1], [0], [2], [2], [1]):   # counts 2,2,2; last 0->1, 1->4, 2->3
        for e in experts:
            p.touch(0, e)
        p.step()
    assert p.victim(0, [0, 1, 2]) == 0             # all count 2: least recent is e0 (t1)
    p.touch(0, 0)                                  # t5: e0 count 3
    assert p.victim(0, [0, 1, 2]) == 2             # e1, e2 count 2: e2 last at t3 < e1 at t4


def test_lcp_priority_by_hand():
    # rho = 0.5, tau = 4. e0 at t0,t1,t2 (mu 3, last 2); e2 at t4 (mu 1); e1 at t5,t6 (mu 2, last 6); clock 7.
    for name in ("lcp", "lcp-filtered"):
        p = make_policy(name, 1, 4, rho=0.5, tau=4)
        for experts in ([0], [0], [0], [], [2], [1], [1]):
            for e in experts:
                p.touch(0, e)
            p.step()
        # P(e0) = 3 * 0.5**(5/4) = 1.2613, P(e1) = 2 * 0.5**(1/4) = 1.6818, P(e2) = 1 * 0.5**(3/4) = 0.5946
        assert p.priority(0, 0) == pytest.approx(1.26135, rel=1e-4)
        assert p.priority(0, 1) == pytest.approx(1.68179, rel=1e-4)
        assert p.priority(0, 2) == pytest.approx(0.59460, rel=1e-4)
        assert p.victim(0, [0, 1, 2]) == 2        # lowest P (LRU would pick e0)
        p.touch(0, 3)                             # new expert at clock 7: mu 1, nu 0 -> P = 1
        assert p.admit(0, 3, 2) is True           # 1 >= 0.5946
        assert p.admit(0, 3, 1) is (name == "lcp")  # the paper's rule always admits; the filter: 1 < 1.6818
        assert p.admit(0, 3, None) is True        # a free slot


def test_lru_sequence():
    # 2 slots, one expert per token: 0 1 2 0 1 3 1
    # t0 0 miss->s0; t1 1 miss->s1; t2 2 miss, evict 0 (last t0); t3 0 miss, evict 1 (t1 < e2's t2);
    # t4 1 miss, evict 2 (t2 < e0's t3); t5 3 miss, evict 0 (t3 < e1's t4); t6 1 hit.
    hits, misses, ev, final = replay(make_policy("lru", 1, 4), 2, [[0], [1], [2], [0], [1], [3], [1]])
    assert (hits, misses) == (1, 6)
    assert ev == [[], [], [0], [1], [2], [0], []]
    assert final == {1: 0, 3: 1}


def test_lru_vs_lfu_sequence():
    # 2 slots: 0 0 1 2 1 0
    # LRU: t0 0->s0; t1 hit; t2 1->s1; t3 2 miss, evict 0 (last t1 < t2); t4 1 hit; t5 0 miss, evict 2 (t3 < t4).
    hits, misses, ev, final = replay(make_policy("lru", 1, 3), 2, [[0], [0], [1], [2], [1], [0]])
    assert (hits, misses, ev) == (2, 4, [[], [], [], [0], [], [2]])
    assert final == {0: 0, 1: 1}
    # LFU: t3 2 miss, candidates e0 (count 2), e1 (count 1) -> evict 1; t4 1 miss (count 2),
    # candidates e0 (2, last t1), e2 (1) -> evict 2; t5 0 hit.
    hits, misses, ev, final = replay(make_policy("lfu", 1, 3), 2, [[0], [0], [1], [2], [1], [0]])
    assert (hits, misses, ev) == (2, 4, [[], [], [], [1], [2], []])
    assert final == {0: 0, 1: 1}


def test_filtered_lcp_refuses_a_cold_newcomer_and_paper_lcp_admits_it():
    # 1 slot, defaults rho 0.25, tau 128: 0 0 0 1 0
    # t0 0 miss -> free slot; t1, t2 hits (mu 3, last t2); t3 1 miss: P(1) = 1,
    # P(0) = 3 * 0.25**(1/128) = 2.968 -> filtered: not admitted; t4 0 hit.
    assert replay(make_policy("lcp-filtered", 1, 2), 1, [[0], [0], [0], [1], [0]])[:3] == (3, 2, [[], [], [], [], []])
    # the paper's rule (and LRU) evict 0 at t3 for 1 and miss 0 again at t4
    assert replay(make_policy("lcp", 1, 2), 1, [[0], [0], [0], [1], [0]])[:3] == (2, 3, [[], [], [], [0], [1]])
    assert replay(make_policy("lru", 1, 2), 1, [[0], [0], [0], [1], [0]])[:2] == (2, 3)


def test_lcp_admits_after_decay():
    # 1 slot, rho 0.25, tau 1: 0 0 1 1. t2: P(0) = 2 * 0.25**1 = 0.5 < P(1) = 1 -> evict 0; t3 hit.
    hits, misses, ev, final = replay(make_policy("lcp-filtered", 1, 2, rho=0.25, tau=1), 1, [[0], [0], [1], [1]])
    assert (hits, misses, ev, final) == (2, 2, [[], [], [0], []], {1: 0})


def test_static_warm_and_never_admits():
    p = make_policy("static", 1, 4, profile=[[1, 5, 3, 0]])
    assert p.warm(0, 2) == [1, 2]
    d = CacheDirectory([3], p)
    assert d.warm_start() == {0: [1, 2, 0]}
    d2 = CacheDirectory([2], make_policy("static", 1, 4, profile=[[1, 5, 3, 0]]))
    d2.warm_start()
    a = d2.access(0, [3, 1])
    assert a.hits == {1: 0} and a.misses == [3] and a.admitted == {} and a.evicted == []


def test_bad_params():
    with pytest.raises(ValueError):
        make_policy("lcp", 1, 4, rho=0.0)
    with pytest.raises(ValueError):
        make_policy("static", 2, 4, profile=[[1, 2, 3, 4]])
    with pytest.raises(TypeError):
        make_policy("lru", 1, 4, rho=0.5)


def test_reuse_learns_the_reuse_rate_by_gap_and_bypasses():
    # 1 layer, 3 experts, prior 1. Steps: [0], [0], [1], [0]; then clock 4.
    # Gap buckets at each step (gap = clock - last; "never" for untouched):
    #   t0: e0 used at never; e1, e2 exposed at never        -> never: exposed 3, used 1
    #   t1: e0 used at gap 1; e1, e2 never                   -> gap1: 1/1; never: 5, 1
    #   t2: e1 used at never; e0 exposed at gap 1; e2 never   -> gap1: 2 exposed, 1 used; never: 7, 2
    #   t3: e0 used at gap 2; e1 exposed gap 1; e2 never      -> gap1: 3, 1; gap2: 1, 1; never: 8, 2
    p = make_policy("reuse", 1, 3, prior=1.0)
    for experts in ([0], [0], [1], [0]):
        for e in experts:
            p.touch(0, e)
        p.step()
    B = p.GAPS + 1  # index of "never"
    assert (p.exposed[0, 0], p.used[0, 0]) == (3, 1) and (p.exposed[0, 1], p.used[0, 1]) == (1, 1)
    assert (p.exposed[0, B], p.used[0, B]) == (8, 2)
    # Scored during step 4 for a use at step 5: gaps e0 2 (last t3), e1 3 (last t2, nothing seen), e2 never.
    # mean rate (4 + 1) / (12 + 3) = 1/3; rate(gap) = (used + mean) / (exposed + 1); lift = (count + 1) / (mean * 4 + 1)
    mean = 5 / 15
    rate = lambda used, exposed: (used + mean) / (exposed + 1)  # noqa: E731
    lift = lambda count: (count + 1) / (mean * 4 + 1)  # noqa: E731
    assert p.priority(0, 0) == pytest.approx(rate(1, 1) * lift(3))     # 0.667 * 1.714 = 1.143
    assert p.priority(0, 1) == pytest.approx(rate(0, 0) * lift(1))     # 0.333 * 0.857 = 0.286
    assert p.priority(0, 2) == pytest.approx(rate(2, 8) * lift(0))     # 0.259 * 0.429 = 0.111
    assert p.victim(0, [0, 1, 2]) == 2
    # e2 as a newcomer (touched now: gap 1 next step, count 1) against victim e0
    p.touch(0, 2)
    assert p.admit(0, 2, 0) == (p.priority(0, 2) >= p.priority(0, 0))


def test_per_layer_policy_runs_each_layers_rule_on_one_state():
    pol = make_policy("per-layer", 2, 3, layers=["lru", "lfu"])
    for experts in ([0], [0], [1]):               # same accesses on both layers
        for layer in (0, 1):
            for e in experts:
                pol.touch(layer, e)
        pol.step()
    assert pol.victim(0, [0, 1]) == 0             # lru: e0 last at t1 < e1's t2
    assert pol.victim(1, [0, 1]) == 1             # lfu: e1 count 1 < e0's 2
    assert pol.rules["lru"].count is pol.count    # one state
    static = make_policy("per-layer", 2, 3, layers=["static", "lcp-filtered"], profile=[[1, 5, 3], [0, 0, 0]], rho=0.5)
    assert static.warm(0, 2) == [1, 2] and static.warm(1, 2) == []
    assert static.admit(0, 0, None) is False and static.admit(1, 0, None) is True
    with pytest.raises(ValueError, match="2 policy names"):
        make_policy("per-layer", 2, 3, layers=["lru"])
    with pytest.raises(TypeError):
        make_policy("per-layer", 1, 3, layers=["lru"], bogus=1)
