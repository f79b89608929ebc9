"""Trace-driven simulation: replay a routing trace through a policy and a layout, report hits, bytes, ms.

A token's experts at a layer are looked up together (hits counted before anything is admitted) and
never evict one another (`CacheDirectory.access`). A layer at split ratio r < 1 caches top segments,
so its hits are top-segment hits (the bottom still follows the layer's `bottom_on`); at r = 1 a hit
is a whole expert. Time per token comes from the cost model (`costmodel`) at the measured hit and
admission rates, the layer's placement rules and the predictor recall. `--policy auto` runs every
policy and keeps the fastest (with `--split auto`, the solver's choice, per layer where it mixed).

    python -m moepic_core.simulate --trace FILE --preset mixtral-8x7b --cache-gb 8 --policy lru --split 1
"""
from __future__ import annotations

import json
import sys

import numpy as np

from .cache.policies import AUTO
from .cli_args import POLICY_CHOICES, load_trace, model_parser, resolve_cpu_gbps, resolve_model
from .costmodel import build_cost_model, placement_index
from .errors import MoepicError, PlanError
from .layout import Layout, uniform_layout
from .options import exit_with, parsed, ratio_or_auto
from .planning import AUTO_POLICIES, fit_trace, model_accuracy, solve_layout
from .replay import activations, replay_counts
from .trace import RoutingTrace
from .units import GB


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


# --- CLI ---------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = model_parser("python -m moepic_core.simulate", __doc__.splitlines()[0], trace_required=True)
    ap.add_argument("--policy", type=parsed("policy", choices=POLICY_CHOICES), default=AUTO,
                    metavar="{" + ",".join(POLICY_CHOICES) + "}",
                    help="cache policy, or auto (default): the fastest of them on this trace")
    ap.add_argument("--split", type=parsed("split", ratio_or_auto), default="auto",
                    help="R in (0, 1]: every layer the same budget at ratio R, everything over the link; "
                         "auto: the solver's layout (default)")
    args = ap.parse_args(argv)
    try:
        spec, budget = resolve_model(args)
        trace = load_trace(args, spec)
        cpu, _ = resolve_cpu_gbps(args)
        kw = dict(bandwidth_gbps=args.bandwidth_gbps, cpu_gbps=cpu, quant=args.quant, dtype=args.dtype,
                  prefetch_accuracy=args.prefetch_accuracy)
        if args.split == "auto":
            layout = solve_layout(spec, budget.cache_bytes, trace=trace, policy=args.policy, **kw)
        else:
            layout = uniform_split_layout(spec, budget.cache_bytes, args.split, args.quant, args.dtype)
        report = simulate(trace, spec, layout, policy=args.policy, **kw)
    except MoepicError as exc:
        return exit_with(exc)
    report.update(model=spec.name, split=args.split, budget_note=budget.note())
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"{spec.name}  policy {report['policy']}  split {args.split}  cache {budget.cache_bytes / GB:.2f} GB "
          f"({budget.note()})  link {args.bandwidth_gbps:g} GB/s  CPU {cpu:g} GB/s  {report['tokens']} tokens")
    print(f"{'layer':>5} {'slots':>5} {'ratio':>6} {'policy':>12} {'bottom':>6} {'miss':>5} {'hit':>6} {'full':>6} "
          f"{'MB/tok':>8} {'ms':>8}")
    for x in report["layers"]:
        print(f"{x['layer']:>5} {x['slots']:>5} {x['split_ratio']:>6.3f} {x['policy']:>12} {x['bottom_on']:>6} "
              f"{x['miss_on']:>5} {x['hit_rate']:>6.1%} {x['full_hit_rate']:>6.1%} "
              f"{x['bytes_per_token'] / 1e6:>8.1f} {x['ms']:>8.2f}")
    print(f"hit rate {report['hit_rate']:.1%} (whole-expert {report['full_hit_rate']:.1%}), "
          f"{report['bytes_per_token'] / 1e6:.1f} MB/token over the link, {report['cpu_bytes_per_token'] / 1e6:.1f} "
          f"MB/token on the CPU, {report['ms_per_token']:.1f} ms/token = {report['tokens_per_s']:.1f} tok/s (modeled)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
