"""Command line: replay a routing trace through a policy and a layout (`plan/simulate.py`) and print
hits, bytes and modeled ms per layer. `--policy auto` runs every policy and keeps the fastest (with
`--split auto`, the solver's choice, per layer where it mixed).

    python -m moepic_core.simulate --trace FILE --preset mixtral-8x7b --cache-gb 8 --policy lru --split 1
"""
from __future__ import annotations

import json
import sys

from ..cache.policies import AUTO
from ..errors import MoepicError
from ..options import exit_with, parsed, ratio_or_auto
from ..plan.planning import solve_layout
from ..plan.simulate import simulate, uniform_split_layout
from ..units import GB
from .cli_args import POLICY_CHOICES, load_trace, model_parser, resolve_cpu_gbps, resolve_model


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
        cpu, _ = resolve_cpu_gbps(args, spec)
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
          f"({budget.note()})  link {args.bandwidth_gbps:g} GB/s  CPU {cpu:.3g} GB/s  {report['tokens']} tokens")
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
