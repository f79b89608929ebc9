"""Replaying routing traces through caches: hits and admissions per layer, curves h_l(C), Belady's optimum.

An online policy replays with the rule of `CacheDirectory.access`, for all layers and several cache
sizes at once (a policy's state, counts and last steps, does not depend on what is cached): per
token and layer, hits are counted before anything is admitted, every expert of the step is touched,
then each miss in order takes a free slot (if the policy admits it) or replaces the lowest-scored
cached expert outside the step (if the policy admits it). `tests/test_simulate.py` checks this
replay against the directory itself, step by step.

The Belady oracle knows the future: after each step a layer keeps the `C` experts, among those cached
and those just used, whose next use comes soonest (bypass allowed). That is optimal for any policy
that can only cache what it has seen, so it is the ceiling every online policy stays under.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..cache import Policy, make_policy
from ..cache.policies import PARAMS
from ..errors import PlanError
from .trace import RoutingTrace

ORACLE = "belady"


@dataclass
class Curves:
    """Per layer and cache size C = 0..E, per activation: `hit[l, C]` and `admit[l, C]` (misses admitted)."""

    hit: np.ndarray    # float [L, E+1]
    admit: np.ndarray  # float [L, E+1]


def make_trace_policy(trace: RoutingTrace, policy: str, params: dict, profile: RoutingTrace | None = None) -> Policy:
    """`policy` for the trace's shape; `static` without a profile is profiled on `profile`'s counts."""
    if _profiled(policy, params):
        params = {**params, "profile": (profile or trace).counts().tolist()}
    return make_policy(policy, trace.num_layers, trace.num_experts, **params)


def _profiled(policy, params: dict) -> bool:
    """Whether `policy` pins experts from a profile that `params` does not give."""
    return policy == "static" and "profile" not in params


def activations(trace: RoutingTrace) -> np.ndarray:
    """Distinct experts looked up per layer over the trace: int64 [L]."""
    s = np.sort(trace.experts, axis=2)
    distinct = 1 + (s[:, :, 1:] != s[:, :, :-1]).sum(axis=2)
    return distinct.sum(axis=0).astype(np.int64)


def replay_counts(trace: RoutingTrace, slots, policy: str | Policy = "lcp", **params):
    """(hits, admitted), int64 [S, L]: replays with `slots[s, l]` cached experts per layer, one run
    per row s (all rows at once). `policy` is a name (or "belady") or a fresh Policy. A `static`
    layer without a `profile` serves each half of the trace with the other half's counts."""
    slots = np.atleast_2d(np.asarray(slots, np.int64))
    if slots.shape[1] != trace.num_layers:
        raise PlanError(f"slots for {slots.shape[1]} layers, trace has {trace.num_layers}")
    if policy == ORACLE:
        counts = [[_belady_layer(trace.experts[:, l], c) for l, c in enumerate(row)] for row in slots]
        a = np.array(counts, np.int64).reshape(len(slots), trace.num_layers, 2)
        return a[..., 0], a[..., 1]
    if isinstance(policy, Policy):
        return _replay(trace, slots, policy)
    if policy == "per-layer":  # layers are independent: each group replays its own policy's way
        return _per_layer(trace, slots, params)
    if not _profiled(policy, params) or trace.num_tokens < 2:
        return _replay(trace, slots, make_trace_policy(trace, policy, params))
    # a profile measured on the routing it then serves would flatter it: each half is served with
    # the other half's profile, as a calibration profile serves later traffic
    half = trace.num_tokens // 2
    a, b = trace.tokens(slice(0, half)), trace.tokens(slice(half, None))
    runs = [_replay(x, slots, make_trace_policy(x, policy, params, profile=y)) for x, y in ((a, b), (b, a))]
    return runs[0][0] + runs[1][0], runs[0][1] + runs[1][1]


def _replay(trace: RoutingTrace, slots: np.ndarray, pol: Policy):
    S, L, E = len(slots), trace.num_layers, trace.num_experts
    ex = trace.experts.astype(np.int64)
    cached = np.zeros((S, L, E), bool)
    for s, l in np.ndindex(S, L):
        warm = pol.warm(l, int(slots[s, l]))[:slots[s, l]]
        cached[s, l, warm] = True
    n = cached.sum(axis=2)
    hits, admitted = np.zeros((S, L), np.int64), np.zeros((S, L), np.int64)
    layer = np.arange(L)
    rows, lay = np.arange(S)[:, None], layer[None, :]
    free_ok = pol.admits_free(layer)[None, :]
    first = np.ones(ex.shape, bool)  # first occurrence of an expert within a token's layer
    for j in range(1, ex.shape[2]):
        first[:, :, j] = (ex[:, :, j:j + 1] != ex[:, :, :j]).all(axis=2)
    every = np.arange(E)[None, :]
    for t in range(ex.shape[0]):
        step, ok = ex[t], first[t]                                    # [L, k]
        was = cached[:, layer[:, None], step] & ok                    # [S, L, k]
        hits += was.sum(axis=2)
        pol.touch_many(np.broadcast_to(layer[:, None], step.shape)[ok], step[ok])
        in_step = np.zeros((L, E), bool)
        in_step[layer[:, None], step] = True
        score = pol.scores(layer[:, None], every)                     # [L, E]
        for j in range(step.shape[1]):
            miss = ok[None, :, j] & ~was[:, :, j]                     # [S, L]
            if not miss.any():
                continue
            e = step[:, j]
            free = n < slots
            take_free = miss & free & free_ok
            cand = np.where(cached & ~in_step, score, np.inf)          # [S, L, E]
            victim = cand.argmin(axis=2)
            v_score = np.take_along_axis(cand, victim[..., None], 2)[..., 0]
            take_victim = miss & ~free & np.isfinite(v_score) & pol.admits(lay, score[layer, e][None, :], v_score)
            cached[rows, lay, victim] &= ~take_victim
            cached[rows, lay, e[None, :]] |= take_free | take_victim
            n += take_free
            admitted += take_free | take_victim
        pol.step()
    return hits, admitted


def _per_layer(trace: RoutingTrace, slots: np.ndarray, params: dict):
    names = list(params.get("layers") or [])
    if len(names) != trace.num_layers:
        raise PlanError(f"per-layer policy needs {trace.num_layers} policy names, got {len(names)}")
    hits, admitted = np.zeros(slots.shape, np.int64), np.zeros(slots.shape, np.int64)
    for name in dict.fromkeys(names):
        idx = [l for l, n in enumerate(names) if n == name]
        own = {k: v for k, v in params.items() if k in PARAMS.get(name, ())}
        if "profile" in own:
            own["profile"] = [own["profile"][l] for l in idx]
        hits[:, idx], admitted[:, idx] = replay_counts(trace.layers(idx), slots[:, idx], name, **own)
    return hits, admitted


def replay_hits(trace: RoutingTrace, slots, policy: str | Policy = "lcp", **params) -> np.ndarray:
    """Hits per layer (int64 [L]) with `slots[l]` cached experts per layer under `policy` (or "belady")."""
    return replay_counts(trace, [list(slots)], policy, **params)[0][0]


def _belady_layer(experts: np.ndarray, capacity: int) -> tuple[int, int]:
    """(hits, admissions) of the offline optimum at one layer; experts: [T, k]."""
    if capacity <= 0:
        return 0, 0
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
    hits = admitted = 0
    for t in range(T):
        before = set(cache)
        hits += sum(1 for e in steps[t] if e in before)
        cache.update(next_use[t])
        if len(cache) > capacity:
            keep = sorted(cache.items(), key=lambda kv: (kv[1], kv[0]))[:capacity]
            cache = dict(keep)
        admitted += sum(1 for e in steps[t] if e in cache and e not in before)
    return hits, admitted


def curve_sizes(num_experts: int, top_k: int, max_points: int = 17) -> list[int]:
    """Cache sizes at which a curve is measured: all of 0..E when E is small, else a grid."""
    if num_experts + 1 <= max_points:
        return list(range(num_experts + 1))
    grid = set(np.unique(np.round(np.geomspace(1, num_experts, max_points - 2)).astype(int)).tolist())
    grid |= {0, top_k, num_experts}
    return sorted(grid)


def replay_curves(trace: RoutingTrace, policy: str = "lcp", sizes=None, **params) -> Curves:
    """Hit and admission rates of every layer at every cache size C = 0..E, measured on the grid
    `sizes` (a fresh cold cache each) and linearly interpolated between."""
    E = trace.num_experts
    sizes = curve_sizes(E, trace.top_k) if sizes is None else sorted(set(sizes) | {0, E})
    acts = np.maximum(1, activations(trace)).astype(float)
    grid = np.repeat(np.array(sizes)[:, None], trace.num_layers, axis=1)
    hits, admitted = replay_counts(trace, grid, policy, **params)
    full = np.arange(E + 1)
    hit = np.stack([np.interp(full, sizes, row) for row in (hits / acts).T])
    admit = np.stack([np.interp(full, sizes, row) for row in (admitted / acts).T])
    hit = np.maximum.accumulate(hit, axis=1)  # more slots never hit less (cold-start noise aside)
    return Curves(hit=hit, admit=np.minimum(admit, 1.0 - hit))
