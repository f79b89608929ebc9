"""CacheDirectory: lookups per step, no self-eviction within a step, resize and warm start."""
import pytest

from moepic_core.cache import CacheDirectory, make_policy


def test_step_experts_never_evict_one_another():
    # 2 slots, LRU. step0 [0,1]: both miss -> s0, s1.
    # step1 [2,3]: candidates exclude 2,3 -> for 2: {0,1} tie (both t0) -> evict 0, 2->s0; for 3: {1} -> 3->s1.
    # step2 [0,2]: 2 hits (s0); 0 misses, candidates {3} -> evict 3, 0->s1.
    d = CacheDirectory([2], make_policy("lru", 1, 4))
    a = d.access(0, [0, 1]); d.step()
    assert a.misses == [0, 1] and a.admitted == {0: 0, 1: 1}
    a = d.access(0, [2, 3]); d.step()
    assert a.evicted == [0, 1] and a.admitted == {2: 0, 3: 1}
    a = d.access(0, [0, 2])
    assert a.hits == {2: 0} and a.misses == [0] and a.evicted == [3] and a.admitted == {0: 1}


def test_one_slot_two_misses_only_first_admitted():
    d = CacheDirectory([1], make_policy("lru", 1, 4))
    a = d.access(0, [0, 1])
    assert a.misses == [0, 1] and a.admitted == {0: 0} and a.evicted == []


def test_hits_counted_before_admission_and_duplicates_dropped():
    d = CacheDirectory([2], make_policy("lru", 1, 4))
    a = d.access(0, [3, 3])
    assert a.hits == {} and a.misses == [3] and a.admitted == {3: 0}
    assert d.policy.count[0][3] == 1


def test_zero_slots_never_caches():
    d = CacheDirectory([0, 2], make_policy("lcp", 2, 4))
    for _ in range(3):
        assert d.access(0, [1, 2]).admitted == {}
        d.step()
    assert d.cached(0) == {} and d.slot_of(0, 1) is None


def test_resize_keeps_highest_priority_compacted():
    # LFU counts: e0 3, e1 1, e2 2 in 3 slots (e0 s0, e1 s1, e2 s2). Shrink to 2: keep e0, e2 -> slots 0, 1.
    d = CacheDirectory([3], make_policy("lfu", 1, 4))
    for experts in ([0, 1, 2], [0, 2], [0]):
        d.access(0, experts)
        d.step()
    assert d.cached(0) == {0: 0, 1: 1, 2: 2}
    assert d.resize([2]) == {0: {0: 0, 2: 1}}
    assert d.cached(0) == {0: 0, 2: 1}
    assert d.resize([4], keep=False) == {0: {}}
    a = d.access(0, [1])
    assert a.admitted == {1: 0}


def test_resize_layer_count_must_match():
    d = CacheDirectory([1, 1], make_policy("lru", 2, 4))
    with pytest.raises(ValueError):
        d.resize([1])
    with pytest.raises(ValueError):
        CacheDirectory([1], make_policy("lru", 2, 4))


def test_warm_start_only_static_places():
    assert CacheDirectory([2], make_policy("lcp", 1, 4)).warm_start() == {0: []}
    d = CacheDirectory([2, 1], make_policy("static", 2, 3, profile=[[0, 2, 9], [4, 4, 1]]))
    assert d.warm_start() == {0: [2, 1], 1: [0]}
    assert d.cached(0) == {2: 0, 1: 1}
