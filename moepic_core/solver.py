"""Per-layer cache budgets and split ratios that minimise the modeled decode time (see `costmodel`).

Budgets are counted in units of one split chunk (`I/16` rows of an expert); a layer's choice is
`(C slots, split m)` using `C * slot_units[m]` units. `C = 0` and `r = 1` are always candidates.

`optimize` — divide and conquer over layers with a fixed-point iteration:
  * inner (exact for fixed windows): each layer's best cost for every budget `u` (its best ratio at
    that budget); halves of the layer range are solved recursively and merged by a min-plus
    convolution of their cost-vs-budget curves, so the root curve gives the best cost of the whole
    model at every total budget. Its slope at the budget is the price of VRAM (ms per GB) that a
    Lagrangian iteration would search for; the merge gets it without the duality gap that a price
    alone leaves on non-concave hit-rate curves.
  * outer (fixed point on each layer's ratio): a layer's prefetch window depends on the previous
    layer's hit rate and ratio. Each round holds the neighbours at the last layout: a layer's cost
    table is its own time (window from layer l-1) plus layer l+1's time under the window it leaves;
    the inner step re-runs until the layout repeats (a few rounds), from two starting guesses
    (uniform whole experts; nothing cached). The best layout seen, by the coupled model, wins.
`exact_optimum` — the reference: a dynamic program over (units used, previous layer's config), exact
for the coupled model. `uniform` / `best_uniform` — the baselines.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from .costmodel import CostModel

MAX_ROUNDS = 6
MAX_UNITS = 2048  # larger budgets are counted in units of 2, 4, 8 or 16 chunks (fewer split ratios)


@dataclass
class Solution:
    slots: list[int]
    split: list[int]              # index into CostModel.ratios per layer
    ms_per_token: float
    detail: dict = field(default_factory=dict)


def _configs(cm: CostModel):
    """All (C, m) choices of a layer: C = 0 once (at r = 1), else C in 1..E at every split."""
    E, M = cm.num_experts, len(cm.ratios)
    C = np.concatenate([[0], np.repeat(np.arange(1, E + 1), M)])
    m = np.concatenate([[M - 1], np.tile(np.arange(M), E)])
    return C, m, C * cm.slot_units[m]


def _layer_table(cm: CostModel, cost: np.ndarray, cap: int):
    """Best (cost, config index) of a layer for every budget u = 0..min(cap, max useful units),
    from `cost` of every config (`_configs` order)."""
    C, m, units = _configs(cm)
    n = int(min(cap, units.max()))
    idx = np.nonzero(units <= n)[0]
    # per exact unit count: the cheapest config (ties: larger ratio)
    order = idx[np.lexsort((-m[idx], cost[idx], units[idx]))]
    first = np.unique(units[order], return_index=True)[1]
    at = np.full(n + 1, np.inf)
    arg = np.zeros(n + 1, np.int64)
    at[units[order[first]]] = cost[order[first]]
    arg[units[order[first]]] = order[first]
    # best within budget u: running minimum; ties go to the larger budget (use what was given)
    run = np.minimum.accumulate(at)
    take = at <= run * (1 + 1e-12)
    pos = np.maximum.accumulate(np.where(take, np.arange(n + 1), 0))
    return run, arg[pos]


def _config_costs(cm: CostModel, slots, split) -> list[np.ndarray]:
    """Per layer, the cost of every config with the neighbours held at (slots, split): the layer's own
    time (its window set by layer l-1) plus layer l+1's time under the window this config leaves."""
    C, m, _ = _configs(cm)
    h_own, r = cm.hit[:, C], cm.ratios[m]
    costs = []
    for l, w in enumerate(_windows(cm, slots, split)):
        cost = cm.layer(l, h_own[l], r, w)[0]
        if l + 1 < cm.num_layers:
            nxt_h, nxt_r = cm.hit[l + 1, slots[l + 1]], cm.ratios[split[l + 1]]
            cost = cost + cm.layer(l + 1, nxt_h, nxt_r, cm.window(h_own[l], r))[0]
        costs.append(cost)
    return costs


def _merge(fa: np.ndarray, fb: np.ndarray, cap: int, block: int = 256):
    """Min-plus convolution: f(u) = min_v fa(v) + fb(u - v), u <= cap. Returns (f, v*).
    Rows v of a block are written shifted by v into one matrix (a strided view), then reduced."""
    n = min(cap, len(fa) + len(fb) - 2)
    nb = len(fb)
    out = np.full(n + 1, np.inf)
    arg = np.zeros(n + 1, np.int64)
    for v0 in range(0, min(len(fa) - 1, n) + 1, block):
        rows = fa[v0:min(len(fa), n + 1, v0 + block)]
        width = len(rows) + nb - 1
        buf = np.full(len(rows) * width, np.inf)
        view = np.lib.stride_tricks.as_strided(buf, shape=(len(rows), nb), strides=((width + 1) * 8, 8))
        view[:] = rows[:, None] + fb[None, :]
        mat = buf.reshape(len(rows), width)[:, :n + 1 - v0]
        best = mat.argmin(axis=0)
        val = mat[best, np.arange(mat.shape[1])]
        seg = out[v0:v0 + mat.shape[1]]
        better = val < seg * (1 - 1e-12)
        seg[better] = val[better]
        arg[v0:v0 + mat.shape[1]][better] = best[better] + v0
    return out, arg


def _divide(tables, lo: int, hi: int, cap: int):
    """Cost-vs-budget curve of layers [lo, hi) and a tree to recover each layer's budget."""
    if hi - lo == 1:
        return tables[lo][0], ("leaf", lo)
    mid = (lo + hi) // 2
    fa, ta = _divide(tables, lo, mid, cap)
    fb, tb = _divide(tables, mid, hi, cap)
    f, arg = _merge(fa, fb, cap)
    return f, ("node", ta, tb, arg, len(fa) - 1, len(fb) - 1)


def _recover(tree, u: int, out: dict):
    if tree[0] == "leaf":
        out[tree[1]] = u
        return
    _, ta, tb, arg, na, nb = tree
    u = min(u, len(arg) - 1)
    v = int(arg[u])
    _recover(ta, min(v, na), out)
    _recover(tb, min(u - v, nb), out)


def _windows(cm: CostModel, slots, split) -> list[float]:
    w = [cm.first_window]
    for l in range(cm.num_layers - 1):
        w.append(float(cm.window(cm.hit[l, slots[l]], cm.ratios[split[l]])))
    return w


def optimize(cm: CostModel, units: int) -> Solution:
    """Divide-and-conquer over layers with fixed-point rounds on each layer's ratio (module doc),
    started from two guesses of the neighbours (uniform whole experts; nothing cached)."""
    start = time.perf_counter()
    L, units = cm.num_layers, max(0, int(units))
    fine, fine_units = cm, units
    coarse = 1
    while units // coarse > MAX_UNITS and coarse < 16 and len(cm.ratios) > 1:
        coarse *= 2
    if coarse > 1:  # count budgets in units of `coarse` chunks; keep the ratios that fill them exactly
        keep = (cm.slot_units % coarse == 0) | (np.arange(len(cm.ratios)) == len(cm.ratios) - 1)
        cm = replace(cm, ratios=cm.ratios[keep], slot_units=-(-cm.slot_units[keep] // coarse),
                     unit_bytes=cm.unit_bytes * coarse)
        units //= coarse
    C_all, m_all, _ = _configs(cm)
    full = len(cm.ratios) - 1
    per = min(cm.num_experts, units // max(1, L) // int(cm.slot_units[full]))
    best, rounds, price = None, 0, 0.0
    for slots, split in (([per] * L, [full] * L), ([0] * L, [full] * L)):
        seen = set()
        for _ in range(MAX_ROUNDS):
            rounds += 1
            tables = [_layer_table(cm, cost, units) for cost in _config_costs(cm, slots, split)]
            curve, tree = _divide(tables, 0, L, units)
            budgets: dict[int, int] = {}
            _recover(tree, units, budgets)
            pick = [int(tables[l][1][budgets[l]]) for l in range(L)]
            slots, split = [int(C_all[i]) for i in pick], [int(m_all[i]) for i in pick]
            ms = cm.evaluate(slots, split)["ms_per_token"]
            if best is None or ms < best.ms_per_token - 1e-12:
                best = Solution(slots, split, ms)
                top = len(curve) - 1
                step = min(top, int(cm.slot_units[full]))
                # marginal ms/token of one more expert's worth of VRAM, per GB, at the budget
                price = (curve[top - step] - curve[top]) / (step * cm.unit_bytes / 1e9) if step else 0.0
            key = (tuple(slots), tuple(split))
            if key in seen:
                break
            seen.add(key)
    if coarse > 1:  # back to the caller's split indices
        kept = np.nonzero(keep)[0]
        best.split = [int(kept[m]) for m in best.split]
    for base in (uniform(fine, fine_units), best_uniform(fine, fine_units)):  # never worse than the baselines
        if base.ms_per_token < best.ms_per_token - 1e-12:
            best = base
    best.detail = {"rounds": rounds, "price_ms_per_gb": float(price), "budget_unit_bytes": int(cm.unit_bytes),
                   "solve_s": time.perf_counter() - start}
    return best


def exact_optimum(cm: CostModel, units: int) -> Solution:
    """Exact minimum of the coupled model: DP over (units used, previous layer's config)."""
    L, units = cm.num_layers, max(0, int(units))
    C, m, cu = _configs(cm)
    ok = cu <= units
    C, m, cu = C[ok], m[ok], cu[ok]
    X = len(C)
    r = cm.ratios[m]
    dp = np.full((X, units + 1), np.inf)
    dp[np.arange(X), cu] = cm.layer(0, cm.hit[0, C], r, cm.first_window)[0]
    back = []
    for l in range(1, L):
        win = cm.window(cm.hit[l - 1, C], r)                        # [X] window after each prev config
        cost = cm.layer(l, cm.hit[l, C][:, None], r[:, None], win[None, :])[0]   # [x, prev]
        new = np.full((X, units + 1), np.inf)
        bp = np.zeros((X, units + 1), np.int32)
        for x in range(X):
            tot = dp + cost[x][:, None]                             # [prev, u]
            p = tot.argmin(axis=0)
            val = tot[p, np.arange(units + 1)]
            if cu[x]:
                new[x, cu[x]:] = val[:-cu[x]]
                bp[x, cu[x]:] = p[:-cu[x]]
            else:
                new[x], bp[x] = val, p
        back.append(bp)
        dp = new
    x, u = np.unravel_index(np.argmin(dp), dp.shape)
    best = float(dp[x, u]) + cm.other_ms
    picks = [int(x)]
    for l in range(L - 1, 0, -1):
        p = int(back[l - 1][x, u])
        u -= int(cu[x])
        x = p
        picks.append(x)
    picks.reverse()
    return Solution([int(C[i]) for i in picks], [int(m[i]) for i in picks], best)


def uniform(cm: CostModel, units: int, split: int | None = None) -> Solution:
    """Every layer the same budget (units // L) at one split (default r = 1: no split)."""
    m = len(cm.ratios) - 1 if split is None else split
    c = min(cm.num_experts, max(0, int(units)) // cm.num_layers // int(cm.slot_units[m]))
    slots, splits = [c] * cm.num_layers, [m] * cm.num_layers
    return Solution(slots, splits, cm.evaluate(slots, splits)["ms_per_token"])


def best_uniform(cm: CostModel, units: int) -> Solution:
    """The best single split ratio applied uniformly (ties: the larger ratio)."""
    return min((uniform(cm, units, m) for m in reversed(range(len(cm.ratios)))), key=lambda s: s.ms_per_token)


# --- entry points over a ModelSpec -------------------------------------------------------------

def model_curves(spec, trace, policy: str, policy_params: dict | None = None) -> np.ndarray:
    """h[l, C] for the spec's MoE layers from `trace` through `policy` (or "belady"); without a
    trace, uniform routing: h(C) = C / E. Curves are kept on the trace object for repeated solves."""
    from .replay import hit_rate_curves

    E, L = spec.num_experts, spec.num_moe_layers
    if trace is None:
        return np.tile(np.arange(E + 1) / E, (L, 1))
    if trace.num_experts != E:
        raise ValueError(f"trace has {trace.num_experts} experts per layer, {spec.name} has {E}")
    cache = trace.__dict__.setdefault("_curves", {})
    key = (policy, tuple(sorted((k, repr(v)) for k, v in (policy_params or {}).items())))
    if key not in cache:
        cache[key] = hit_rate_curves(trace, policy, **(policy_params or {}))
    h = cache[key]
    return h[np.arange(L) * trace.num_layers // L]  # a trace of another depth is stretched over the layers


def model_accuracy(spec, trace, prefetch_accuracy: float | None) -> np.ndarray:
    """Predictor recall per layer: given, else measured from the trace's guesses, else 0 (no prefetch)."""
    L = spec.num_moe_layers
    if prefetch_accuracy is not None:
        if not 0.0 <= prefetch_accuracy <= 1.0:
            raise ValueError(f"prefetch accuracy must be in [0, 1], got {prefetch_accuracy}")
        return np.full(L, float(prefetch_accuracy))
    recall = None if trace is None else trace.prediction_recall()
    if recall is None:
        return np.zeros(L)
    return np.nan_to_num(recall, nan=0.0)[np.arange(L) * trace.num_layers // L]  # never guessed: no prefetch


def to_layout(spec, cm: CostModel, sol: Solution, quant: str, dtype: str, prediction: dict):
    from .layout import Layout, plan_layer

    I, rb = spec.intermediate_size, spec.row_bytes(quant, dtype)
    plans = []
    for c, m in zip(sol.slots, sol.split):
        ratio = float(cm.ratios[m]) if c else 1.0
        slot_bytes = round(ratio * I) * rb
        plans.append(plan_layer(c * slot_bytes, ratio, I, rb, spec.num_experts))
    return Layout(plans, source="solver", prediction=prediction)


def _solve(spec, cache_bytes, bandwidth_gbps, trace, policy, quant, dtype, prefetch_accuracy, compute_ms, exact,
           policy_params=None):
    from .costmodel import build_cost_model

    acc = model_accuracy(spec, trace, prefetch_accuracy)
    kw = dict(bandwidth_gbps=bandwidth_gbps, quant=quant, dtype=dtype, compute_ms=compute_ms)
    cm = build_cost_model(spec, model_curves(spec, trace, policy, policy_params), acc, **kw)
    units = max(0, int(cache_bytes)) // cm.unit_bytes
    start = time.perf_counter()
    sol = exact_optimum(cm, units) if exact else optimize(cm, units)
    wall = time.perf_counter() - start
    cm_lru = cm if policy == "lru" else build_cost_model(spec, model_curves(spec, trace, "lru"), acc, **kw)
    ev = cm.evaluate(sol.slots, sol.split)
    acts = [spec.top_k] * spec.num_moe_layers
    prediction = {
        "method": "exact-dp" if exact else "divide-and-conquer",
        "policy": policy, "bandwidth_gbps": bandwidth_gbps, "quant": quant, "dtype": dtype,
        "cache_bytes": int(cache_bytes), "ms_per_token": ev["ms_per_token"],
        "hit_rate": float(np.average([x["hit_rate"] for x in ev["layers"]], weights=acts)),
        "bytes_per_token": ev["bytes_per_token"], "prefetch_accuracy": float(acc.mean()),
        "layers": ev["layers"], "solve_s": wall, **sol.detail,
        "baselines": {"uniform_lru_no_split": uniform(cm_lru, units).ms_per_token,
                      "best_uniform_split": best_uniform(cm, units).ms_per_token},
        "best_uniform_ratio": float(cm.ratios[best_uniform(cm, units).split[0]]),
        "trace": "none (uniform routing assumed)" if trace is None else (trace.model or "trace"),
    }
    return to_layout(spec, cm, sol, quant, dtype, prediction)


def solve_layout(spec, cache_bytes: int, *, bandwidth_gbps: float, trace=None, policy: str = "lcp",
                 quant: str = "none", dtype: str = "float16", prefetch_accuracy: float | None = None,
                 compute_ms: dict | None = None, policy_params: dict | None = None):
    """Each MoE layer's budget and split ratio for `cache_bytes` of expert cache (a `Layout` with
    source "solver"; `prediction` holds the modeled ms/token, hit rates and the two baselines).
    `trace`: calibration routing (None: uniform routing assumed); `policy` (+ `policy_params`, e.g.
    rho/tau for lcp) sets the hit-rate curves; `prefetch_accuracy` None: the trace's measured recall
    (0 without recorded guesses); `compute_ms`: expert_ms / dense_ms / other_ms / device_gbps."""
    return _solve(spec, cache_bytes, bandwidth_gbps, trace, policy, quant, dtype, prefetch_accuracy, compute_ms,
                  exact=False, policy_params=policy_params)


def solve_exact_dp(spec, cache_bytes: int, *, bandwidth_gbps: float, trace=None, policy: str = "lcp",
                   quant: str = "none", dtype: str = "float16", prefetch_accuracy: float | None = None,
                   compute_ms: dict | None = None, policy_params: dict | None = None):
    """Same as `solve_layout` by the exact dynamic program (slow for large models: the reference)."""
    return _solve(spec, cache_bytes, bandwidth_gbps, trace, policy, quant, dtype, prefetch_accuracy, compute_ms,
                  exact=True, policy_params=policy_params)
