"""Trace-driven simulation: replay a routing trace through a policy and a layout, report hits, bytes, ms.

A token's experts at a layer are looked up together (hits counted before anything is admitted) and
never evict one another (`CacheDirectory.access`). A layer at split ratio r < 1 caches top segments,
so its hits are top-segment hits (the bottom is still fetched); at r = 1 a hit is a whole expert.
Time per token comes from the cost model (`costmodel`) at the measured hit rates and predictor recall.

    python -m moepic_core.simulate --trace FILE --preset mixtral-8x7b --cache-gb 8 --policy lru --split 1
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from .costmodel import build_cost_model
from .layout import Layout, uniform_layout
from .replay import ORACLE, activations, replay_hits
from .trace import RoutingTrace

POLICY_CHOICES = ("lcp", "lru", "lfu", "static", ORACLE)


def fit_trace(trace: RoutingTrace, spec) -> RoutingTrace:
    """The trace with one layer per MoE layer of `spec` (a trace of another depth is stretched)."""
    if trace.num_experts != spec.num_experts:
        raise ValueError(f"trace has {trace.num_experts} experts per layer, {spec.name} has {spec.num_experts}")
    L = spec.num_moe_layers
    if trace.num_layers == L:
        return trace
    return trace.layers(np.arange(L) * trace.num_layers // L)


def simulate(trace: RoutingTrace, spec, layout: Layout, *, policy: str = "lcp", bandwidth_gbps: float = 25.0,
             quant: str = "none", dtype: str = "float16", prefetch_accuracy: float | None = None,
             compute_ms: dict | None = None, **policy_params) -> dict:
    """Per-layer and total hits, bytes per token and modeled ms per token (module doc)."""
    from .solver import model_accuracy

    trace = fit_trace(trace, spec)
    L = spec.num_moe_layers
    if len(layout.layers) != L:
        raise ValueError(f"layout has {len(layout.layers)} layers, {spec.name} has {L} MoE layers")
    slots = [p.slots for p in layout.layers]
    ratios = [p.split_ratio if p.slots else 1.0 for p in layout.layers]
    hits = replay_hits(trace, slots, policy, **policy_params)
    acts = activations(trace)
    acc = model_accuracy(spec, trace, prefetch_accuracy)
    cm = build_cost_model(spec, np.zeros((L, spec.num_experts + 1)), acc, bandwidth_gbps=bandwidth_gbps,
                          quant=quant, dtype=dtype, compute_ms=compute_ms)
    layers, window = [], cm.first_window
    for l in range(L):
        h = float(hits[l] / max(1, acts[l]))
        ms, _, moved = cm.layer(l, h, ratios[l], window)
        window = float(cm.window(h, ratios[l]))
        full = int(hits[l]) if ratios[l] >= 1.0 else 0
        layers.append({"layer": l, "slots": slots[l], "split_ratio": ratios[l],
                       "budget_bytes": layout.layers[l].budget_bytes, "top_hits": int(hits[l]) - full,
                       "full_hits": full, "misses": int(acts[l] - hits[l]), "hit_rate": h,
                       "full_hit_rate": full / max(1, acts[l]), "prefetch_recall": float(acc[l]),
                       "bytes_per_token": float(moved), "ms": float(ms)})
    total = max(1, int(acts.sum()))
    return {"policy": policy, "tokens": trace.num_tokens, "bandwidth_gbps": bandwidth_gbps, "quant": quant,
            "hit_rate": float(hits.sum() / total),
            "full_hit_rate": sum(x["full_hits"] for x in layers) / total,
            "bytes_per_token": sum(x["bytes_per_token"] for x in layers),
            "ms_per_token": cm.other_ms + sum(x["ms"] for x in layers),
            "cache_bytes": layout.total_bytes, "layers": layers}


def uniform_split_layout(spec, cache_bytes: int, ratio: float, quant: str = "none", dtype: str = "float16") -> Layout:
    return uniform_layout(cache_bytes, spec.num_moe_layers, ratio, spec.intermediate_size,
                          spec.row_bytes(quant, dtype), spec.num_experts)


# --- CLI ---------------------------------------------------------------------------------------

def add_model_args(ap: argparse.ArgumentParser, trace_required: bool) -> None:
    """Flags shared with `python -m moepic_core.solve`."""
    ap.add_argument("--trace", required=trace_required, help="routing trace .npz")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="model preset name")
    src.add_argument("--model", help="model folder (config.json)")
    bud = ap.add_mutually_exclusive_group(required=True)
    bud.add_argument("--vram-gb", type=float, help="all the VRAM the engine may use (dense part, KV, staging, cache)")
    bud.add_argument("--cache-gb", type=float, help="expert-cache budget")
    ap.add_argument("--bandwidth-gbps", type=float, default=25.0, help="host-to-device GB/s (default 25, PCIe 4.0)")
    ap.add_argument("--quant", choices=("none", "int8", "int4"), default="none")
    ap.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    ap.add_argument("--prefetch-accuracy", type=float, default=None,
                    help="predictor recall (default: measured from the trace's guesses, else 0)")
    ap.add_argument("--json", action="store_true", help="print JSON")


def resolve_model(args):
    """(spec, cache_bytes, budget note) from --preset/--model and --vram-gb/--cache-gb."""
    from .solve import cache_budget_from_vram

    if args.preset:
        from .presets import get_preset
        spec = get_preset(args.preset)
    else:
        try:
            from .models import load_spec
        except ImportError as exc:
            raise ValueError(f"--model needs moepic_core.models.load_spec, not available here ({exc}); use --preset") from exc
        spec = load_spec(args.model)
    if args.cache_gb is not None:
        if args.cache_gb < 0:
            raise ValueError("--cache-gb must be >= 0")
        return spec, int(args.cache_gb * 1e9), "cache budget given"
    cache, note = cache_budget_from_vram(spec, int(args.vram_gb * 1e9), args.quant, args.dtype)
    return spec, cache, note


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m moepic_core.simulate", description=__doc__.splitlines()[0])
    add_model_args(ap, trace_required=True)
    ap.add_argument("--policy", choices=POLICY_CHOICES, default="lcp")
    ap.add_argument("--split", default="auto", help="R in (0, 1]: every layer the same budget at ratio R; "
                                                     "auto: the solver's layout (default)")
    args = ap.parse_args(argv)
    try:
        spec, cache_bytes, note = resolve_model(args)
        trace = fit_trace(RoutingTrace.load(args.trace), spec)
        if args.split == "auto":
            from .solver import solve_layout
            layout = solve_layout(spec, cache_bytes, bandwidth_gbps=args.bandwidth_gbps, trace=trace,
                                  policy=args.policy, quant=args.quant, dtype=args.dtype,
                                  prefetch_accuracy=args.prefetch_accuracy)
        else:
            layout = uniform_split_layout(spec, cache_bytes, float(args.split), args.quant, args.dtype)
        report = simulate(trace, spec, layout, policy=args.policy, bandwidth_gbps=args.bandwidth_gbps,
                          quant=args.quant, dtype=args.dtype, prefetch_accuracy=args.prefetch_accuracy)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report.update(model=spec.name, split=args.split, budget_note=note)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"{spec.name}  policy {args.policy}  split {args.split}  cache {cache_bytes / 1e9:.2f} GB ({note})  "
          f"{args.bandwidth_gbps:g} GB/s  {report['tokens']} tokens")
    print(f"{'layer':>5} {'slots':>5} {'ratio':>6} {'hit':>6} {'full':>6} {'MB/tok':>8} {'ms':>8}")
    for x in report["layers"]:
        print(f"{x['layer']:>5} {x['slots']:>5} {x['split_ratio']:>6.3f} {x['hit_rate']:>6.1%} "
              f"{x['full_hit_rate']:>6.1%} {x['bytes_per_token'] / 1e6:>8.1f} {x['ms']:>8.2f}")
    print(f"hit rate {report['hit_rate']:.1%} (whole-expert {report['full_hit_rate']:.1%}), "
          f"{report['bytes_per_token'] / 1e6:.1f} MB/token, {report['ms_per_token']:.1f} ms/token (modeled)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
