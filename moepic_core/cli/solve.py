"""Solve the per-layer cache layout for a model and a VRAM budget, and print it beside the baselines.

    python -m moepic_core.solve --preset mixtral-8x7b --vram-gb 12 --quant int4 --cpu-gbps 60 [--trace FILE] [--json]

Per MoE layer (decoder-layer index): budget, split ratio, slots, cache policy, where the bottoms of
cached experts and the misses not admitted are computed (link = fetched, then GPU; cpu = computed
on the CPU from RAM), prefetch, predicted hit rate and ms. Without `--trace` the curves come from a
synthetic trace calibrated on Mixtral-8x7B decode statistics (`synthetic.MIXTRAL_DECODE`) at the
model's sizes; the output says so.
"""
from __future__ import annotations

import json
import sys

from ..errors import MoepicError
from ..options import exit_with, parsed
from ..plan.planning import solve_layout
from ..plan.synthetic import synthetic_trace
from ..units import GB
from .cli_args import POLICY_CHOICES, load_trace, model_parser, resolve_cpu_gbps, resolve_model


def default_trace(spec, tokens: int | None = None, seed: int = 0):
    """A synthetic calibration trace at the spec's sizes (fewer tokens for many-expert models)."""
    if tokens is None:
        tokens = 512 if spec.num_experts * spec.top_k <= 64 else 256
    return synthetic_trace(tokens, spec.num_moe_layers, spec.num_experts, spec.top_k, seed=seed,
                           model=f"synthetic ({spec.name} sizes, Mixtral-calibrated)")


def layer_rows(spec, layout) -> list[dict]:
    """One row per MoE layer: its plan, decoder-layer index and predicted hit rate and ms."""
    pred = layout.prediction.get("layers") or [{}] * len(layout.layers)
    return [{"layer": spec.moe_layers[i], **plan.to_dict(), **{k: x.get(k) for k in ("hit_rate", "admit_rate", "ms")}}
            for i, (plan, x) in enumerate(zip(layout.layers, pred))]


def print_layout(spec, layout, rows) -> None:
    p = layout.prediction
    print(f"{'layer':>5} {'budget MB':>10} {'ratio':>6} {'slots':>5} {'policy':>12} {'bottom':>6} {'miss':>5} "
          f"{'pf':>3} {'hit':>6} {'ms':>8}")
    for r in rows:
        print(f"{r['layer']:>5} {r['budget_bytes'] / 1e6:>10.1f} {r['split_ratio']:>6.3f} {r['slots']:>5} "
              f"{r['policy']:>12} {r['bottom_on']:>6} {r['miss_on']:>5} {'on' if r['prefetch'] else 'off':>3} "
              f"{r['hit_rate']:>6.1%} {r['ms']:>8.3f}")
    names = {"transfer_only": "transfer only", "hybrid_whole_expert": "hybrid whole-expert",
             "solver_no_split": "no split",
             "uniform_lru_no_split": "uniform no split (LRU)", "best_uniform_split": "best uniform split"}
    base = " | ".join(f"{names[k]} {v:.2f}" for k, v in p["baselines"].items())
    print(f"predicted {p['ms_per_token']:.2f} ms/token = {1e3 / p['ms_per_token']:.1f} tok/s (policy {p['policy']}, "
          f"{p['solve_s'] * 1e3:.0f} ms to solve) | {base}")


def main(argv=None) -> int:
    ap = model_parser("python -m moepic_core.solve", __doc__.splitlines()[0], trace_required=False)
    ap.add_argument("--policy", type=parsed("policy", choices=POLICY_CHOICES), default="auto",
                    metavar="{" + ",".join(POLICY_CHOICES) + "}",
                    help="cache policy, or auto (default): the best by replaying the trace; belady: the bound")
    args = ap.parse_args(argv)
    try:
        spec, budget = resolve_model(args)
        trace = load_trace(args, spec) if args.trace else default_trace(spec)
        cpu, cpu_source = resolve_cpu_gbps(args, spec)
        layout = solve_layout(spec, budget.cache_bytes, bandwidth_gbps=args.bandwidth_gbps, cpu_gbps=cpu,
                              trace=trace, policy=args.policy, quant=args.quant, dtype=args.dtype,
                              prefetch_accuracy=args.prefetch_accuracy)
    except MoepicError as exc:
        return exit_with(exc)
    p, rows = layout.prediction, layer_rows(spec, layout)
    if args.json:
        print(json.dumps({"model": spec.name, "cache_bytes": budget.cache_bytes, "budget_note": budget.note(),
                          "budget": budget.to_dict(), "trace": p["trace"], "policy": p["policy"],
                          "policy_ms": p["policy_ms"], "cpu_gbps": cpu, "cpu_source": cpu_source,
                          "bandwidth_gbps": args.bandwidth_gbps, "layers": rows, "ms_per_token": p["ms_per_token"],
                          "tokens_per_s": 1e3 / p["ms_per_token"], "hit_rate": p["hit_rate"],
                          "bytes_per_token": p["bytes_per_token"], "cpu_bytes_per_token": p["cpu_bytes_per_token"],
                          "baselines": p["baselines"], "solve_s": p["solve_s"]}, indent=1))
        return 0
    print(f"{spec.name}  cache {budget.cache_bytes / GB:.2f} GB ({budget.note()})  link {args.bandwidth_gbps:g} GB/s  "
          f"CPU {cpu:.3g} GB/s ({cpu_source})  quant {args.quant}  policy {args.policy}\n"
          f"trace: {p['trace']}  predictor recall {p['prefetch_accuracy']:.0%}")
    print_layout(spec, layout, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
