"""Replaying routing traces through caches: hit counts per layer, hit-rate curves h_l(C), Belady's optimum.

Online policies run through the same `CacheDirectory` the engine uses (for each token: every layer's
experts looked up together, then one `step`). The Belady oracle knows the future: after each step a
layer keeps the `C` experts, among those cached and those just used, whose next use comes soonest
(bypass allowed). That is optimal for any policy that can only cache what it has seen, so it is the
ceiling every online policy stays under.
"""
from __future__ import annotations

import numpy as np

from .cache import CacheDirectory, Policy, make_policy
from .trace import RoutingTrace

ORACLE = "belady"


def _policy(trace: RoutingTrace, policy: str | Policy, params: dict) -> Policy:
    if isinstance(policy, Policy):
        return policy
    if policy == "static" and "profile" not in params:
        params = {**params, "profile": trace.counts().tolist()}
    return make_policy(policy, trace.num_layers, trace.num_experts, **params)


def activations(trace: RoutingTrace) -> np.ndarray:
    """Distinct experts looked up per layer over the trace: int64 [L]."""
    s = np.sort(trace.experts, axis=2)
    distinct = 1 + (s[:, :, 1:] != s[:, :, :-1]).sum(axis=2)
    return distinct.sum(axis=0).astype(np.int64)


def replay_hits(trace: RoutingTrace, slots, policy: str | Policy = "lcp", **params) -> np.ndarray:
    """Hits per layer (int64 [L]) with `slots[l]` cached experts per layer under `policy` (or "belady")."""
    slots = [int(s) for s in slots]
    if policy == ORACLE:
        return np.array([_belady_layer(trace.experts[:, l], c) for l, c in enumerate(slots)], np.int64)
    d = CacheDirectory(slots, _policy(trace, policy, params))
    d.warm_start()
    hits = np.zeros(trace.num_layers, np.int64)
    rows = trace.experts.tolist()
    for token in rows:
        for l, experts in enumerate(token):
            hits[l] += len(d.access(l, experts).hits)
        d.step()
    return hits


def _belady_layer(experts: np.ndarray, capacity: int) -> int:
    """Hits of the offline optimum at one layer; experts: [T, k]."""
    if capacity <= 0:
        return 0
    T = experts.shape[0]
    steps = [list(dict.fromkeys(row)) for row in experts.tolist()]
    next_use: list[dict[int, float]] = [dict() for _ in range(T)]
    upcoming: dict[int, float] = {}
    for t in range(T - 1, -1, -1):
        for e in steps[t]:
            next_use[t][e] = upcoming.get(e, float("inf"))
        for e in steps[t]:
            upcoming[e] = t
    cache: dict[int, float] = {}  # expert -> its next use
    hits = 0
    for t in range(T):
        hits += sum(1 for e in steps[t] if e in cache)
        cache.update(next_use[t])
        if len(cache) > capacity:
            keep = sorted(cache.items(), key=lambda kv: (kv[1], kv[0]))[:capacity]
            cache = dict(keep)
    return hits


def curve_sizes(num_experts: int, top_k: int, max_points: int = 17) -> list[int]:
    """Cache sizes at which a hit-rate curve is measured: all of 0..E when E is small, else a grid."""
    if num_experts + 1 <= max_points:
        return list(range(num_experts + 1))
    grid = set(np.unique(np.round(np.geomspace(1, num_experts, max_points - 2)).astype(int)).tolist())
    grid |= {0, top_k, num_experts}
    return sorted(grid)


def hit_rate_curves(trace: RoutingTrace, policy: str = "lcp", sizes=None, **params) -> np.ndarray:
    """h[l, C]: hit rate of layer l with C slots (C = 0..E), measured on the grid `sizes` and linearly
    interpolated between. Policies are rebuilt for each size (a fresh cold cache each replay)."""
    E = trace.num_experts
    sizes = curve_sizes(E, trace.top_k) if sizes is None else sorted(set(sizes) | {0, E})
    acts = np.maximum(1, activations(trace)).astype(float)
    measured = np.zeros((trace.num_layers, len(sizes)))
    for i, c in enumerate(sizes):
        if c:
            measured[:, i] = replay_hits(trace, [c] * trace.num_layers, policy, **params) / acts
    full = np.arange(E + 1)
    curves = np.stack([np.interp(full, sizes, row) for row in measured])
    return np.maximum.accumulate(curves, axis=1)  # more slots never hit less (cold-start noise aside)
