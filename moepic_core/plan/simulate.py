"""Trace-driven simulation: replay a routing trace through a policy and a layout, report hits, bytes, ms.

A token's experts at a layer are looked up together (hits counted before anything is admitted) and
never evict one another (`CacheDirectory.access`). A layer at split ratio r < 1 caches top segments,
so its hits are top-segment hits (the bottom still follows the layer's `bottom_on`); at r = 1 a hit
is a whole expert. Time per token comes from the cost model (`costmodel`) at the measured hit and
admission rates, the layer's placement rules and the predictor recall. `--policy auto` runs every
policy and keeps the fastest (with `--split auto`, the solver's choice, per layer where it mixed).

The command line is moepic_core/cli/simulate.py.
"""
from __future__ import annotations

import numpy as np

from ..cache.policies import AUTO
from ..errors import PlanError
from ..layout import Layout, uniform_layout
from .costmodel import build_cost_model, placement_index
from .planning import AUTO_POLICIES, fit_trace, model_accuracy
from .replay import activations, replay_counts
from .trace import RoutingTrace


def simulate(trace: RoutingTrace, spec, layout: Layout, *, policy: str = "lru", bandwidth_gbps: float = 25.0,
             cpu_gbps: float = 0.0, quant: str = "none", dtype: str = "float16",
             prefetch_accuracy: float | None = None, compute_ms: dict | None = None, **policy_params) -> dict:
    """Per-layer and total hits, bytes per token and modeled ms per token (module doc). Layers whose
    plan names a policy run it; the others run `policy`."""
    fit_trace(trace, spec)
    L = spec.num_moe_layers
    if len(layout.layers) != L:
        raise PlanError(f"layout has {len(layout.layers)} layers, {spec.name} has {L} MoE layers")
    if policy == AUTO and not all(p.policy for p in layout.layers):
        return min((simulate(trace, spec, layout, policy=p, bandwidth_gbps=bandwidth_gbps, cpu_gbps=cpu_gbps,
                             quant=quant, dtype=dtype, prefetch_accuracy=prefetch_accuracy, compute_ms=compute_ms,
                             **policy_params) for p in AUTO_POLICIES), key=lambda rep: rep["ms_per_token"])
    name, params = layout.policy(policy)
    slots = [p.slots for p in layout.layers]
    ratios = [p.split_ratio if p.slots else 1.0 for p in layout.layers]
    hits, admitted = (x[0] for x in replay_counts(trace, [slots], name, **{**policy_params, **params}))
    acts = np.maximum(1, activations(trace))
    acc = model_accuracy(spec, trace, prefetch_accuracy)
    cm = build_cost_model(spec, np.zeros((L, spec.num_experts + 1)), acc, bandwidth_gbps=bandwidth_gbps,
                          cpu_gbps=cpu_gbps, quant=quant, dtype=dtype, compute_ms=compute_ms)
    layers, window = [], cm.first_window
    for l, plan in enumerate(layout.layers):
        h, a = hits[l] / acts[l], admitted[l] / acts[l]
        q = placement_index(plan.bottom_on == "cpu", plan.miss_on == "cpu", plan.prefetch)
        x = cm.layer(l, h, a, ratios[l], q, window)
        window = float(x["window"])
        full = int(hits[l]) if ratios[l] >= 1.0 else 0
        layers.append({"layer": spec.moe_layers[l], "slots": slots[l], "split_ratio": ratios[l],
                       "policy": plan.policy or name, "bottom_on": plan.bottom_on, "miss_on": plan.miss_on,
                       "prefetch": plan.prefetch, "budget_bytes": plan.budget_bytes, "top_hits": int(hits[l]) - full,
                       "full_hits": full, "misses": int(acts[l] - hits[l]), "admitted": int(admitted[l]),
                       "hit_rate": float(h), "full_hit_rate": full / acts[l], "prefetch_recall": float(acc[l]),
                       "bytes_per_token": float(x["bytes"]), "cpu_bytes_per_token": float(x["cpu_bytes"]),
                       "ms": float(x["ms"])})
    total = int(acts.sum())
    ms = cm.other_ms + sum(x["ms"] for x in layers)
    return {"policy": name if name != "per-layer" else "per-layer", "tokens": trace.num_tokens,
            "bandwidth_gbps": bandwidth_gbps, "cpu_gbps": cpu_gbps, "quant": quant,
            "hit_rate": float(hits.sum() / total), "full_hit_rate": sum(x["full_hits"] for x in layers) / total,
            "bytes_per_token": sum(x["bytes_per_token"] for x in layers),
            "cpu_bytes_per_token": sum(x["cpu_bytes_per_token"] for x in layers),
            "ms_per_token": ms, "tokens_per_s": 1e3 / ms, "cache_bytes": layout.total_bytes, "layers": layers}


def uniform_split_layout(spec, cache_bytes: int, ratio: float, quant: str = "none", dtype: str = "float16") -> Layout:
    return uniform_layout(cache_bytes, spec.num_moe_layers, ratio, spec.intermediate_size,
                          spec.row_bytes(quant, dtype), spec.num_experts)
