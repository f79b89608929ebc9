"""Per-layer cache budgets, split ratios, placement rules and policies that minimise the modeled decode
time (see `costmodel`).

Budgets are counted in units of one split chunk (`I/16` rows of an expert). A layer's config is
`(policy p, C slots, split m, placement q)` using `C * slot_units[m]` units; `C = 0` and `r = 1` are
always candidates, the placement's bottom rule only exists where a layer is split.

`optimize` — divide and conquer over layers inside coordinate steps on the layers' configs:
  * inner (exact for fixed neighbours): each layer's best cost for every budget `u` (its best config
    at that budget); halves of the layer range are solved recursively and merged by a min-plus
    convolution of their cost-vs-budget curves, so the root curve gives the best cost of the whole
    range at every total budget (no duality gap on non-concave hit-rate curves, as a price of VRAM
    alone would leave).
  * outer: a layer's time depends on its predecessor's config (the prefetch window it leaves). With
    the odd layers held, the even layers' costs (own time + the next layer's time under the window
    they leave) separate exactly, so one inner solve finds their best configs and budgets; then the
    odd layers; repeated until the modeled time stops falling. Two further steps move what that
    cannot: all layers at once with their neighbours held (moves budget between even and odd
    layers), and an exact DP over candidates near the current layout (its configs in every
    placement, and the best configs at budgets within NEAR experts of each layer's own). Started
    from the best uniform layout, so never worse than it.
`exact_optimum` — the reference: a dynamic program over (units used, previous layer's config), exact
for the coupled model. `uniform` / `best_uniform` — the baselines.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from .costmodel import PLACEMENTS, CostModel

MAX_ROUNDS = 6
NEAR = 3  # whole experts of budget either side of a layer's own that the neighbourhood step considers
MAX_UNITS = 128    # the search counts budgets in units of 1, 2, 4, ... chunks: at most this many units,
FINE_UNITS = 1024  # then refines its layout in units of at most this many (coarse units allow fewer slot counts)
# the placement with the same miss rule and prefetch but no bottom rule (for r = 1 and C = 0)
NO_BOTTOM = np.array([np.nonzero((PLACEMENTS[:, 0] == 0) & (PLACEMENTS[:, 1:] == row[1:]).all(1))[0][0]
                      for row in PLACEMENTS])


@dataclass
class Solution:
    slots: list[int]
    split: list[int]              # index into CostModel.ratios per layer
    place: list[int]              # index into costmodel.PLACEMENTS per layer
    policy: list[int]             # index into CostModel.policies per layer
    ms_per_token: float
    detail: dict = field(default_factory=dict)


@dataclass
class Configs:
    """Every config a layer may take, as parallel arrays [X]."""

    p: np.ndarray
    C: np.ndarray
    m: np.ndarray
    q: np.ndarray
    units: np.ndarray
    _groups: tuple | None = field(default=None, repr=False, compare=False)

    def take(self, idx) -> "Configs":
        return Configs(*(a[idx] for a in (self.p, self.C, self.m, self.q, self.units)))

    def groups(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(order, starts, units): the configs by budget units, the larger ratio first within a unit
        count; where each unit count starts in `order`; the distinct unit counts. Sorted once."""
        if self._groups is None:
            order = np.lexsort((-self.m, self.units))
            u = self.units[order]
            starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
            self._groups = order, starts, u[starts]
        return self._groups


def configs(cm: CostModel, factor: int = 1) -> Configs:
    """C = 0 once (one policy, r = 1); C in 1..E at every policy and split; placements allowed, the
    bottom rule only where r < 1. Budgets in units of `factor` chunks: configs whose slots do not
    fill whole units are left out."""
    P, E, M = len(cm.policies), cm.num_experts, len(cm.ratios)
    allowed = np.nonzero(cm.placements)[0]
    whole = allowed[~PLACEMENTS[allowed, 0]]
    parts = [np.stack(np.meshgrid([0], [0], [M - 1], whole, indexing="ij")).reshape(4, -1),
             np.stack(np.meshgrid(range(P), range(1, E + 1), [M - 1], whole, indexing="ij")).reshape(4, -1)]
    if M > 1:
        parts.append(np.stack(np.meshgrid(range(P), range(1, E + 1), range(M - 1), allowed,
                                          indexing="ij")).reshape(4, -1))
    p, C, m, q = np.concatenate(parts, axis=1)
    chunks = C * cm.slot_units[m]
    keep = chunks % factor == 0
    return Configs(p[keep], C[keep], m[keep], q[keep], chunks[keep] // factor)


def budget_factor(cm: CostModel, units: int, max_units: int) -> int:
    """Chunks per budget unit: the slots' common divisor, doubled until at most `max_units` units."""
    factor = int(np.gcd.reduce(cm.slot_units))
    while units // factor > max_units:
        factor *= 2
    return factor


def restrict(cm: CostModel, policies=None, whole_only: bool = False, placements=None) -> CostModel:
    """`cm` over some policies (indices), only r = 1, or only some placements (bool mask)."""
    kw = {}
    if policies is not None:
        kw.update(hit=cm.hit[policies], admit=cm.admit[policies], policies=tuple(cm.policies[i] for i in policies))
    if whole_only:
        kw.update(ratios=cm.ratios[-1:], slot_units=cm.slot_units[-1:])
    if placements is not None:
        kw["placements"] = cm.placements & placements
    return replace(cm, **kw)


def mixed(cm: CostModel, policy_of_layer) -> CostModel:
    """A one-policy model whose curves at layer l are those of policy `policy_of_layer[l]`."""
    lay = np.arange(cm.num_layers)
    pick = np.asarray(policy_of_layer)
    return replace(cm, hit=cm.hit[pick, lay][None], admit=cm.admit[pick, lay][None], policies=("per-layer",))


def layer_policies(cm: CostModel, units: int, sol: Solution) -> np.ndarray:
    """Per layer, the policy whose cost-vs-budget curve (neighbours held at `sol`) is lowest on average
    over budgets 0 .. twice the fair share (ties: the policy `sol` has there)."""
    search = _Search(cm, units, FINE_UNITS)
    cfg, cost = search.cfg, search.costs(search.index(sol))
    span = 2 * search.units // cm.num_layers + 1
    out = []
    for l in range(cm.num_layers):
        area = []
        for p in range(len(cm.policies)):
            own = (cfg.p == p) | (cfg.C == 0)
            run = _layer_table(np.where(own, cost[l], np.inf), cfg, span)[0]
            area.append(run[np.isfinite(run)].mean())
        out.append(sol.policy[l] if area[sol.policy[l]] <= min(area) else int(np.argmin(area)))
    return np.array(out)


def chain(cm: CostModel, p, C, m, q) -> dict:
    """ms per token (and per layer) of a batch of layouts, arrays [B, L] of config fields."""
    p, C, m, q = (np.atleast_2d(np.asarray(v)) for v in (p, C, m, q))
    L = cm.num_layers
    window = np.full(p.shape[0], cm.first_window)
    per_layer = []
    for l in range(L):
        x = cm.layer(l, cm.hit[p[:, l], l, C[:, l]], cm.admit[p[:, l], l, C[:, l]], cm.ratios[m[:, l]], q[:, l], window)
        per_layer.append(x["ms"])
        window = x["window"]
    per_layer = np.stack(per_layer, axis=1)
    return {"ms": cm.other_ms + per_layer.sum(axis=1), "layers": per_layer}


def _layer_table(cost: np.ndarray, cfg: Configs, cap: int):
    """Best (cost, config index) of a layer for every budget u = 0..min(cap, max useful units), from
    `cost` of every config of `cfg`."""
    order, starts, distinct = cfg.groups()
    n = int(min(cap, distinct[-1]))
    k = int(np.searchsorted(distinct, n, side="right"))  # unit counts <= n
    end = int(starts[k]) if k < len(starts) else len(order)
    c = cost[order[:end]]
    # per exact unit count: the cheapest config (ties: the first, i.e. the larger ratio)
    best = np.minimum.reduceat(c, starts[:k])
    is_best = c <= np.repeat(best, np.diff(np.r_[starts[:k], end]))
    first = np.minimum.reduceat(np.where(is_best, np.arange(end), end), starts[:k])
    at = np.full(n + 1, np.inf)
    arg = np.zeros(n + 1, np.int64)
    at[distinct[:k]] = best
    arg[distinct[:k]] = order[first]
    # best within budget u: running minimum; ties go to the larger budget (use what was given)
    run = np.minimum.accumulate(at)
    take = at <= run * (1 + 1e-12)
    pos = np.maximum.accumulate(np.where(take, np.arange(n + 1), 0))
    return run, arg[pos]


def _solution(cm: CostModel, sel: Configs, ms: float | None = None) -> Solution:
    """The layout of configs `sel` (one per layer); `ms`: its modeled time if known, else the chain's."""
    ms = float(chain(cm, sel.p, sel.C, sel.m, sel.q)["ms"][0]) if ms is None else ms
    return Solution([int(c) for c in sel.C], [int(x) for x in sel.m], [int(x) for x in sel.q],
                    [int(x) for x in sel.p], ms)


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


def _chain_dp(cm: CostModel, parts, cu: np.ndarray, cands: list[np.ndarray], units: int) -> np.ndarray:
    """Exact minimum over configs `cands[l]` per layer (indices into `parts` [L, X] and their units
    `cu`) within `units`: a DP over (units used, previous layer's config). Returns each layer's index."""
    first = parts.take((0, cands[0]))
    dp = np.full((len(cands[0]), units + 1), np.inf)
    dp[np.arange(len(cands[0])), cu[cands[0]]] = cm.time(first, cm.first_window)[0]
    win, back = first.window, []
    for l in range(1, cm.num_layers):
        c = cands[l]
        cost = cm.time(parts.take((l, c[:, None])), win[None, :])[0]  # [this, previous]
        new = np.full((len(c), units + 1), np.inf)
        bp = np.zeros((len(c), units + 1), np.int32)
        for i, x in enumerate(c):
            tot = dp + cost[i][:, None]                             # [previous, u]
            p = tot.argmin(axis=0)
            val = tot[p, np.arange(units + 1)]
            new[i, cu[x]:] = val[:units + 1 - cu[x]]
            bp[i, cu[x]:] = p[:units + 1 - cu[x]]
        back.append(bp)
        dp, win = new, parts.window[l, c]                           # the window rests on the config alone
    i, u = np.unravel_index(np.argmin(dp), dp.shape)
    picks = [int(cands[-1][i])]
    for l in range(cm.num_layers - 1, 0, -1):
        prev = int(back[l - 1][i, u])
        u -= int(cu[cands[l][i]])
        i = prev
        picks.append(int(cands[l - 1][i]))
    return np.array(picks[::-1])


def _parts(cm: CostModel, cfg: Configs):
    """LayerParts of every layer and config: arrays [L, X]."""
    lay = np.arange(cm.num_layers)[:, None]
    return cm.parts(lay, cm.hit[cfg.p[None, :], lay, cfg.C[None, :]], cm.admit[cfg.p[None, :], lay, cfg.C[None, :]],
                    cm.ratios[cfg.m][None, :], cfg.q[None, :])


class _Search:
    """One optimisation: the model, its configs at a budget unit, their parts, the budget."""

    def __init__(self, cm: CostModel, units: int, max_units: int):
        self.cm, self.factor = cm, budget_factor(cm, units, max_units)
        self.units = units // self.factor
        self.cfg = configs(cm, self.factor)
        self.parts = _parts(cm, self.cfg)
        self.layers = np.arange(cm.num_layers)
        self.rounds = 0

    def windows(self, pick: np.ndarray) -> np.ndarray:
        return np.concatenate([[self.cm.first_window], self.parts.window[self.layers[:-1], pick[:-1]]])

    def ms(self, pick: np.ndarray) -> float:
        return self.cm.other_ms + float(self.cm.time(self.parts.take((self.layers, pick)), self.windows(pick))[0].sum())

    def costs(self, pick: np.ndarray) -> np.ndarray:
        """[L, X]: per layer, the cost of every config with the neighbours held at `pick`: the
        layer's own time (its window set by layer l-1) plus layer l+1's time under the window it leaves."""
        cost = self.cm.time(self.parts, self.windows(pick)[:, None])[0]
        held = self.parts.take((self.layers[1:, None], pick[1:, None]))
        cost[:-1] += self.cm.time(held, self.parts.window[:-1])[0]
        return cost

    def index(self, sol: Solution) -> np.ndarray:
        """Config indices of a solution, each layer's slots rounded down to whole budget units."""
        c, M = self.cfg, len(self.cm.ratios)
        out = []
        for p, C, m, q in zip(sol.policy, sol.slots, sol.split, sol.place):
            p, m = (p, m) if C else (0, M - 1)
            ok = np.nonzero((c.p == p) & (c.m == m) & (c.q == q) & (c.C <= C))[0]
            if not len(ok):  # nothing of this split fits a whole unit: cache nothing
                ok = np.nonzero((c.C == 0) & (c.q == NO_BOTTOM[q]))[0]
            out.append(ok[np.argmax(c.C[ok])])
        return np.array(out)

    def solve_free(self, pick: np.ndarray, free: np.ndarray) -> np.ndarray:
        """The best configs of layers `free` with the others held (exact when no two free layers are
        neighbours), by the divide and conquer."""
        self.rounds += 1
        cfg = self.cfg
        cap = self.units - int(cfg.units[pick[np.setdiff1d(self.layers, free)]].sum())
        tables = [_layer_table(cost, cfg, cap) for cost in self.costs(pick)[free]]
        _, tree = _divide(tables, 0, len(free), cap)
        budgets: dict[int, int] = {}
        _recover(tree, cap, budgets)
        pick = pick.copy()
        pick[free] = [t[1][min(budgets[i], len(t[1]) - 1)] for i, t in enumerate(tables)]
        return pick

    def around(self, pick: np.ndarray, near: int) -> np.ndarray:
        """The best layout over candidates near `pick`, exactly (`_chain_dp`): per layer its config in
        every placement, and the best configs (neighbours held; or the link idle before it) at budgets
        within NEAR whole experts of its own."""
        cm, cfg = self.cm, self.cfg
        self.rounds += 1
        wide = cm.time(self.parts, np.inf)[0]  # configs that pay only once the previous layer leaves the link idle
        reach = near * int(cm.slot_units[-1]) // self.factor
        cands = []
        for l, (held, idle) in enumerate(zip(self.costs(pick), wide)):
            x, b = pick[l], int(cfg.units[pick[l]])
            near = [_layer_table(c, cfg, self.units)[1][max(0, b - reach):b + reach + 1]
                    for c in (held, idle)]
            same = np.nonzero((cfg.p == cfg.p[x]) & (cfg.C == cfg.C[x]) & (cfg.m == cfg.m[x]))[0]
            cands.append(np.unique(np.concatenate([*near, same, [x]])))
        return _chain_dp(cm, self.parts, cfg.units, cands, self.units)

    def polish(self, pick: np.ndarray) -> tuple[np.ndarray, float]:
        """Exact steps on the even layers, then the odd ones, until the modeled time stops falling."""
        best, ms = pick, self.ms(pick)
        for _ in range(MAX_ROUNDS):
            for parity in (0, 1):
                if len(self.layers[parity::2]):
                    pick = self.solve_free(pick, self.layers[parity::2])
            new = self.ms(pick)
            if new >= ms * (1 - 1e-9):
                break
            best, ms = pick, new
        return best, ms

    def run(self, start: np.ndarray, near: int = 0) -> tuple[np.ndarray, float]:
        """Polish `start`; then, while they pay, a step over the neighbourhood and a step on all layers
        at once, each polished."""
        pick, ms = self.polish(start)
        for _ in range(MAX_ROUNDS):
            gain = False
            for step in (lambda p: self.around(p, near or NEAR), lambda p: self.solve_free(p, self.layers)):
                cand, new = self.polish(step(pick))
                if new < ms * (1 - 1e-9):
                    pick, ms, gain = cand, new, True
            if not gain:
                break
        return pick, ms


def optimize(cm: CostModel, units: int, start: Solution | None = None, from_uniform: bool = True) -> Solution:
    """Divide and conquer inside coordinate steps (module doc): the full search in coarse budget units
    from the best uniform layout (unless `from_uniform` is False) and `start`, if given, then exact
    steps in fine units from there and from the starts. Never worse than any start."""
    began = time.perf_counter()
    units = max(0, int(units))
    starts = ([best_uniform(cm, units)] if from_uniform or start is None else []) + ([start] if start else [])
    coarse = _Search(cm, units, MAX_UNITS)
    found = [_solution(cm, coarse.cfg.take(pick), ms) for pick, ms in (coarse.run(coarse.index(s)) for s in starts)]
    fine = _Search(cm, units, FINE_UNITS)
    sol = min([_solution(cm, fine.cfg.take(pick), ms) for pick, ms in (fine.polish(fine.index(s)) for s in found)]
              + starts, key=lambda s: s.ms_per_token)
    sol.detail = {"rounds": coarse.rounds + fine.rounds, "solve_s": time.perf_counter() - began}
    return sol


def exact_optimum(cm: CostModel, units: int) -> Solution:
    """Exact minimum of the coupled model: DP over (units used, previous layer's config)."""
    units = max(0, int(units))
    cfg = configs(cm)
    fit = np.nonzero(cfg.units <= units)[0]
    return _solution(cm, cfg.take(_chain_dp(cm, _parts(cm, cfg), cfg.units, [fit] * cm.num_layers, units)))


def uniforms(cm: CostModel, units: int, splits=None, policy: int = 0) -> list[Solution]:
    """For each split in `splits` (default all): every layer the same budget (units // L) at that split
    and `policy`; each layer's placement the cheapest allowed one given the window its predecessor leaves."""
    M, L = len(cm.ratios), cm.num_layers
    m = np.arange(M) if splits is None else np.asarray(splits)
    C = np.minimum(cm.num_experts, max(0, int(units)) // L // cm.slot_units[m])          # [S]
    q = np.nonzero(cm.placements)[0]
    ok = ~PLACEMENTS[q, 0][None, :] | ((m < M - 1) & (C > 0))[:, None]                  # [S, Q]
    window, place = np.full(len(m), cm.first_window), []
    for l in range(L):
        x = cm.parts(l, cm.hit[policy, l, C][:, None], cm.admit[policy, l, C][:, None], cm.ratios[m][:, None],
                     q[None, :])
        best = np.where(ok, cm.time(x, window[:, None])[0], np.inf).argmin(axis=1)
        place.append(q[best])
        window = x.window[np.arange(len(m)), best]
    place = np.stack(place, axis=1)
    ms = chain(cm, np.full((len(m), L), policy), np.repeat(C[:, None], L, 1), np.repeat(m[:, None], L, 1), place)["ms"]
    return [Solution([int(C[i])] * L, [int(m[i])] * L, [int(x) for x in place[i]], [policy] * L, float(ms[i]))
            for i in range(len(m))]


def uniform(cm: CostModel, units: int, split: int | None = None, policy: int = 0) -> Solution:
    """Every layer the same budget at one split (default r = 1: no split); see `uniforms`."""
    return uniforms(cm, units, [len(cm.ratios) - 1 if split is None else split], policy)[0]


def best_uniform(cm: CostModel, units: int, policy: int = 0) -> Solution:
    """The best single split ratio applied uniformly (ties: the larger ratio)."""
    return min(reversed(uniforms(cm, units, policy=policy)), key=lambda s: s.ms_per_token)
