"""Planning a model's layout: curves from a calibration trace, the cache policy chosen by measurement,
the solver's layout (`solver`), and the baselines it is compared with.

    layout = solve_layout(spec, cache_bytes, bandwidth_gbps=25, cpu_gbps=60, trace=trace, policy="auto")

`policy="auto"` replays the trace through every policy of `AUTO_POLICIES`, ranks them by their best
uniform layout, solves the layout in full with the `SOLVED` best and keeps the fastest; a per-layer
mix (each layer the policy that suits it there) replaces it only if it is at least `PER_LAYER_GAIN`
faster (a mix fitted to a short trace otherwise mostly fits noise).
Baselines, ms/token at the same budget, hardware and trace:
  uniform_lru_no_split  every layer the same budget, whole experts, LRU, everything over the link
  best_uniform_split    every layer the same budget at the best single ratio, the chosen policy
  transfer_only         the solver with everything over the link (no CPU path), best policy
  solver_no_split       the solver with whole experts only (every placement), best policy: what the split buys
  hybrid_whole_expert   the solver with whole experts only, misses not admitted computed on the CPU,
                        no prefetch, best policy: the llama.cpp (`--n-cpu-moe`) / Fiddler placement
"""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from ..cache.policies import AUTO, PARAMS
from ..errors import TraceError
from ..layout import Layout, plan_layer
from ..options import bad
from .costmodel import LINK_ONLY, PLACEMENTS, PREFETCH_CHUNK_BYTES, build_cost_model
from .replay import Curves, replay_curves
from .solver import Solution, best_uniform, exact_optimum, layer_policies, mixed, optimize, restrict, uniform

AUTO_POLICIES = ("lru", "lfu", "lcp", "lcp-filtered", "reuse", "static")
PER_LAYER_GAIN = 0.01
SOLVED = 1  # policies solved in full after the uniform screening
PEER_PLACEMENT = PLACEMENTS[:, 1] & ~PLACEMENTS[:, 2]  # misses on the CPU, no prefetch


def fit_trace(trace, spec, resample: bool = False):
    """The trace if it has the spec's MoE layers and experts; with `resample`, a trace of another
    depth is stretched over the layers. Else one line naming both shapes."""
    L, E = spec.num_moe_layers, spec.num_experts
    if trace.num_layers == L and trace.num_experts == E:
        return trace
    shapes = (f"the trace has {trace.num_layers} MoE layers x {trace.num_experts} experts, {spec.name} has "
              f"{L} MoE layers x {E} experts")
    if trace.num_experts != E:
        raise TraceError(f"{shapes}: a trace fits only a model with as many experts")
    if not resample:
        raise TraceError(f"{shapes}; --resample-trace stretches its layers over the model's")
    return trace.layers(np.arange(L) * trace.num_layers // L)


def model_curves(spec, trace, policy: str, policy_params: dict | None = None) -> Curves:
    """Hit and admission curves of the spec's MoE layers from `trace` through `policy` (or "belady");
    without a trace, uniform routing: h(C) = C / E, every miss admitted. Kept on the trace object."""
    E, L = spec.num_experts, spec.num_moe_layers
    if trace is None:
        hit = np.tile(np.arange(E + 1) / E, (L, 1))
        return Curves(hit=hit, admit=np.zeros_like(hit) if policy == "static" else 1.0 - hit)
    fit_trace(trace, spec)
    cache = trace.__dict__.setdefault("_curves", {})
    key = (policy, tuple(sorted((k, repr(v)) for k, v in (policy_params or {}).items())))
    if key not in cache:
        cache[key] = replay_curves(trace, policy, **(policy_params or {}))
    return cache[key]


def model_accuracy(spec, trace, prefetch_accuracy: float | None) -> np.ndarray:
    """Predictor recall per layer: given, else measured from the trace's guesses, else 0 (no prefetch)."""
    L = spec.num_moe_layers
    if prefetch_accuracy is not None:
        if not 0.0 <= prefetch_accuracy <= 1.0:
            raise bad("prefetch_accuracy", prefetch_accuracy)
        return np.full(L, float(prefetch_accuracy))
    recall = None if trace is None else trace.prediction_recall()
    if recall is None:
        return np.zeros(L)
    return np.nan_to_num(recall, nan=0.0)  # never guessed (the first MoE layer): no prefetch


def candidates(policy: str) -> tuple[str, ...]:
    return AUTO_POLICIES if policy == AUTO else (policy,)


def model_cost(spec, trace, policies, *, bandwidth_gbps: float, cpu_gbps: float = 0.0, quant: str = "none",
               dtype: str = "float16", prefetch_accuracy: float | None = None, compute_ms: dict | None = None,
               policy_params: dict | None = None, chunk_bytes: float = PREFETCH_CHUNK_BYTES):
    """A CostModel with one pair of curves per policy in `policies`."""
    params = policy_params or {}
    own = (lambda p: params) if len(policies) == 1 else (lambda p: {k: v for k, v in params.items()
                                                                   if k in PARAMS.get(p, ())})
    curves = [model_curves(spec, trace, p, own(p)) for p in policies]
    return build_cost_model(spec, np.stack([c.hit for c in curves]), model_accuracy(spec, trace, prefetch_accuracy),
                            admit=np.stack([c.admit for c in curves]), policies=policies,
                            bandwidth_gbps=bandwidth_gbps, cpu_gbps=cpu_gbps, quant=quant, dtype=dtype,
                            compute_ms=compute_ms, chunk_bytes=chunk_bytes)


def choose(cm, units: int, exact: bool = False) -> tuple[Solution, dict]:
    """The best layout over the model's policies. Each policy is screened by its best uniform layout;
    the SOLVED best are solved in full, the winner alone or, if it pays (PER_LAYER_GAIN), mixed per
    layer. Returns the layout and, per policy, its uniform and (where solved) solved ms/token."""
    P = len(cm.policies)
    if exact:  # the reference: every policy alone, by the exact DP
        sols = [exact_optimum(restrict(cm, [i]), units) for i in range(P)]
        for i, sol in enumerate(sols):
            sol.policy = [i] * cm.num_layers
        best = min(sols, key=lambda x: x.ms_per_token)
        return best, {n: {"solved": x.ms_per_token} for n, x in zip(cm.policies, sols)}
    screen = [best_uniform(cm, units, policy=i).ms_per_token for i in range(P)]
    report = {n: {"uniform": ms} for n, ms in zip(cm.policies, screen)}
    best = None
    for i in np.argsort(screen, kind="stable")[:SOLVED]:
        alone = restrict(cm, [int(i)])
        whole = optimize(restrict(alone, whole_only=True), units)
        whole.split = [len(cm.ratios) - 1] * cm.num_layers  # r = 1 in cm's ratios
        sol = optimize(alone, units, start=whole)
        sol.policy = [int(i)] * cm.num_layers
        report[cm.policies[i]]["solved"] = sol.ms_per_token
        if best is None or sol.ms_per_token < best.ms_per_token:
            best = sol
    if P > 1:
        per_layer = layer_policies(cm, units, best)
        if len(set(per_layer.tolist())) > 1:
            start = replace(best, policy=[0] * cm.num_layers)
            mix = optimize(mixed(cm, per_layer), units, start=start, from_uniform=False)
            if mix.ms_per_token < best.ms_per_token * (1 - PER_LAYER_GAIN):
                best = replace(mix, policy=[int(p) for p in per_layer])
    return best, report


def baselines(cm, cm_lru, units: int, chosen: Solution) -> dict[str, Solution]:
    """The baselines' layouts (module doc) at `units` of budget; hybrid_whole_expert only where there
    is a CPU path. Policy indices are `cm`'s (LRU's for uniform_lru_no_split)."""
    link = restrict(cm_lru, placements=LINK_ONLY)
    first = sorted(set(chosen.policy))[0]
    out = {"uniform_lru_no_split": uniform(link, units),
           "best_uniform_split": best_uniform(cm, units, policy=first),
           "transfer_only": choose(restrict(cm, placements=LINK_ONLY), units)[0],
           "solver_no_split": choose(restrict(cm, whole_only=True), units)[0]}
    out["solver_no_split"].split = [len(cm.ratios) - 1] * cm.num_layers  # r = 1 in cm's ratios
    if cm.cpu_bw > 0:
        out["hybrid_whole_expert"] = choose(restrict(cm, whole_only=True, placements=PEER_PLACEMENT), units)[0]
        out["hybrid_whole_expert"].split = [len(cm.ratios) - 1] * cm.num_layers  # r = 1 in cm's ratios
    return out


def to_layout(spec, cm, sol: Solution, quant: str, dtype: str, prediction: dict) -> Layout:
    I, rb = spec.intermediate_size, spec.row_bytes(quant, dtype)
    plans = []
    for c, m, q, p in zip(sol.slots, sol.split, sol.place, sol.policy):
        ratio = float(cm.ratios[m]) if c else 1.0
        bottom_cpu, miss_cpu, prefetch = (bool(x) for x in PLACEMENTS[q])
        plans.append(plan_layer(c * round(ratio * I) * rb, ratio, I, rb, spec.num_experts,
                                bottom_on="cpu" if bottom_cpu and ratio < 1 else "link",
                                miss_on="cpu" if miss_cpu else "link", prefetch=prefetch, policy=cm.policies[p]))
    return Layout(plans, source="solver", prediction=prediction)


def solve_layout(spec, cache_bytes: int, *, bandwidth_gbps: float, cpu_gbps: float = 0.0, trace=None,
                 policy: str = AUTO, quant: str = "none", dtype: str = "float16",
                 prefetch_accuracy: float | None = None, compute_ms: dict | None = None,
                 policy_params: dict | None = None, exact: bool = False):
    """Each MoE layer's budget, split ratio, placement rule, prefetch and policy for `cache_bytes` of
    expert cache (a `Layout` with source "solver"; `prediction` holds the modeled ms/token, hit rates,
    each policy's ms/token and the baselines). `trace`: calibration routing fitting the spec (None:
    uniform routing assumed); `policy`: a registered name, "belady" (the bound) or "auto" (module doc);
    `cpu_gbps`: CPU expert throughput in GB/s of weight bytes (0: everything over the link);
    `prefetch_accuracy` None: the trace's measured recall (give 0 when the engine does not prefetch);
    `compute_ms`: expert_ms / dense_ms / other_ms / device_gbps; `exact`: the DP instead of D&C."""
    kw = dict(bandwidth_gbps=bandwidth_gbps, cpu_gbps=cpu_gbps, quant=quant, dtype=dtype,
              prefetch_accuracy=prefetch_accuracy, compute_ms=compute_ms, policy_params=policy_params)
    cm = model_cost(spec, trace, candidates(policy), **kw)
    units = max(0, int(cache_bytes)) // cm.unit_bytes
    start, cpu_start = time.perf_counter(), time.process_time()
    sol, alone = choose(cm, units, exact)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    cm_lru = model_cost(spec, trace, ("lru",), **{**kw, "policy_params": None})
    prediction = {
        "method": "exact-dp" if exact else "divide-and-conquer", **_predicted(cm, sol),
        "policy_asked": policy, "policy_ms": alone, "bandwidth_gbps": bandwidth_gbps, "cpu_gbps": cpu_gbps,
        "quant": quant, "dtype": dtype, "cache_bytes": int(cache_bytes), "prefetch_accuracy": float(cm.accuracy.mean()),
        **sol.detail, "solve_s": wall, "solve_cpu_s": cpu,
        "trace": "none (uniform routing assumed)" if trace is None else (trace.model or "trace"),
    }
    start = time.perf_counter()
    bases = baselines(cm, cm_lru, units, sol)
    prediction["baselines"] = {name: b.ms_per_token for name, b in bases.items()}
    prediction["baselines_s"] = time.perf_counter() - start
    for name in ("transfer_only", "solver_no_split", "hybrid_whole_expert"):  # in the search space: never slower
        if name in bases and bases[name].ms_per_token < sol.ms_per_token * (1 - 1e-12):
            sol = bases[name]
            prediction.update(fallback=name, **_predicted(cm, sol))
    return to_layout(spec, cm, sol, quant, dtype, prediction)


def _predicted(cm, sol: Solution) -> dict:
    """The prediction fields that follow from a layout."""
    ev = cm.evaluate(sol.policy, sol.slots, sol.split, sol.place)
    names = sorted({cm.policies[p] for p in sol.policy})
    return {"policy": names[0] if len(names) == 1 else "per-layer", "ms_per_token": ev["ms_per_token"],
            "hit_rate": float(np.mean([x["hit_rate"] for x in ev["layers"]])),
            "bytes_per_token": ev["bytes_per_token"], "cpu_bytes_per_token": ev["cpu_bytes_per_token"],
            "layers": ev["layers"]}

