"""Solve the per-layer cache layout for a model and a VRAM budget, and print it beside the baselines.

    python -m moepic_core.solve --preset mixtral-8x7b --vram-gb 12 [--trace FILE] [--json]

Without `--trace` the hit-rate curves come from a synthetic trace calibrated on Mixtral-8x7B decode
statistics (`synthetic.MIXTRAL_DECODE`) at the model's sizes; the output says so.
"""
from __future__ import annotations

import argparse
import json
import sys

from .errors import BudgetError

CONTEXT_TOKENS = 4096  # KV reserve: this many tokens of context (the engine's default max_context)


def cache_budget_from_vram(spec, vram_bytes: int, quant: str = "none", dtype: str = "float16",
                           context_tokens: int = CONTEXT_TOKENS) -> tuple[int, str]:
    """Expert-cache bytes left from `vram_bytes` after what the engine reserves (`budget.fixed_costs`):
    the dense part, a KV reserve for `context_tokens`, a staging area for one token's k whole experts
    (the engine adds room for extra prefetch guesses) and the prefill workspace."""
    from .budget import fixed_costs

    costs = fixed_costs(spec, dtype, context_tokens, spec.top_k * spec.expert_bytes(quant, dtype))
    reserve = sum(costs.values())
    if vram_bytes < reserve:
        raise BudgetError(f"{vram_bytes / 1e9:.2f} GB of VRAM is below the minimum {reserve / 1e9:.2f} GB for "
                          f"{spec.name} (dense part, KV for {context_tokens} tokens, staging, workspace)", reserve)
    note = (f"VRAM {vram_bytes / 1e9:.2f} GB - dense {costs['dense_bytes'] / 1e9:.2f} - KV/staging/workspace "
            f"{(reserve - costs['dense_bytes']) / 1e9:.2f}")
    return vram_bytes - reserve, note


def default_trace(spec, tokens: int | None = None, seed: int = 0):
    """A synthetic calibration trace at the spec's sizes (fewer tokens for many-expert models)."""
    from .synthetic import synthetic_trace

    if tokens is None:
        tokens = 512 if spec.num_experts * spec.top_k <= 64 else 256
    return synthetic_trace(tokens, spec.num_moe_layers, spec.num_experts, spec.top_k, seed=seed,
                           model=f"synthetic ({spec.name} sizes, Mixtral-calibrated)")


def main(argv=None) -> int:
    from .simulate import add_model_args, fit_trace, resolve_model
    from .solver import solve_layout
    from .trace import RoutingTrace

    ap = argparse.ArgumentParser(prog="python -m moepic_core.solve", description=__doc__.splitlines()[0])
    add_model_args(ap, trace_required=False)
    ap.add_argument("--policy", choices=("lcp", "lru", "lfu", "static", "belady"), default="lcp")
    args = ap.parse_args(argv)
    try:
        spec, cache_bytes, note = resolve_model(args)
        trace = fit_trace(RoutingTrace.load(args.trace), spec) if args.trace else default_trace(spec)
        layout = solve_layout(spec, cache_bytes, bandwidth_gbps=args.bandwidth_gbps, trace=trace, policy=args.policy,
                              quant=args.quant, dtype=args.dtype, prefetch_accuracy=args.prefetch_accuracy)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    p = layout.prediction
    rows = [{**plan.to_dict(), "hit_rate": x["hit_rate"], "ms": x["ms"]} for plan, x in zip(layout.layers, p["layers"])]
    if args.json:
        print(json.dumps({"model": spec.name, "cache_bytes": cache_bytes, "budget_note": note, "trace": p["trace"],
                          "layers": rows, "ms_per_token": p["ms_per_token"], "hit_rate": p["hit_rate"],
                          "bytes_per_token": p["bytes_per_token"], "baselines": p["baselines"],
                          "solve_s": p["solve_s"]}, indent=1))
        return 0
    print(f"{spec.name}  cache {cache_bytes / 1e9:.2f} GB ({note})  {args.bandwidth_gbps:g} GB/s  "
          f"quant {args.quant}  policy {args.policy}\ntrace: {p['trace']}  predictor recall {p['prefetch_accuracy']:.0%}")
    print(f"{'layer':>5} {'budget MB':>10} {'ratio':>6} {'slots':>5} {'hit':>6} {'ms':>8}")
    for i, r in enumerate(rows):
        print(f"{i:>5} {r['budget_bytes'] / 1e6:>10.1f} {r['split_ratio']:>6.3f} {r['slots']:>5} "
              f"{r['hit_rate']:>6.1%} {r['ms']:>8.3f}")
    b = p["baselines"]
    print(f"predicted {p['ms_per_token']:.2f} ms/token (solver, {p['solve_s'] * 1e3:.0f} ms to solve) | "
          f"uniform no split (LRU) {b['uniform_lru_no_split']:.2f} | best uniform split "
          f"(r={p['best_uniform_ratio']:.3f}) {b['best_uniform_split']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
