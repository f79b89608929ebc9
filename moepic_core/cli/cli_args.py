"""The flags `python -m moepic_core.solve` and `python -m moepic_core.simulate` share, and what they
resolve to: the model's spec and budget (`budget.plan_budget`, as the engine), the CPU speed, the trace.
A bad value is refused in one line naming the flag (`options.exit_with`), as `chat` and launch.py do.
"""
from __future__ import annotations

import argparse

from ..budget import plan_budget
from ..cache.policies import AUTO, POLICIES
from ..options import DTYPES, OneLineParser, bad, parsed
from ..plan.planning import fit_trace
from ..plan.replay import ORACLE
from ..plan.trace import RoutingTrace
from ..presets import get_preset
from ..spec import QUANTS
from ..units import GB

POLICY_CHOICES = (AUTO, *(p for p in POLICIES if p != "per-layer"), ORACLE)


def model_parser(prog: str, description: str, trace_required: bool) -> argparse.ArgumentParser:
    """A one-line-error parser with the shared flags; the caller adds its own (--policy, --split)."""
    ap = OneLineParser(prog=prog, description=description)
    ap.add_argument("--trace", required=trace_required, help="routing trace .npz")
    ap.add_argument("--resample-trace", action="store_true",
                    help="stretch a trace with another number of MoE layers over the model's (else refused)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="model preset name")
    src.add_argument("--model", help="model folder (config.json)")
    bud = ap.add_mutually_exclusive_group(required=True)
    bud.add_argument("--vram-gb", type=parsed("vram_gb", float), metavar="GB",
                     help="all the VRAM the engine may use (dense part, KV, staging, cache)")
    bud.add_argument("--cache-gb", type=parsed("cache_gb", float), metavar="GB", help="expert-cache budget")
    ap.add_argument("--bandwidth-gbps", type=parsed("bandwidth_gbps", float), default=25.0, metavar="GBPS",
                    help="host-to-device GB/s (default 25, PCIe 4.0)")
    ap.add_argument("--cpu-gbps", type=parsed("cpu_gbps", float), default=None, metavar="GBPS",
                    help="CPU expert-compute throughput, GB/s of weight bytes; 0: no CPU path "
                         "(default: measured here on an expert of the model's shapes)")
    ap.add_argument("--quant", type=parsed("quant", choices=QUANTS), default="none", metavar="{" + ",".join(QUANTS) + "}")
    ap.add_argument("--dtype", type=parsed("dtype", choices=DTYPES), default="float16",
                    metavar="{" + ",".join(DTYPES) + "}")
    ap.add_argument("--prefetch-accuracy", type=parsed("prefetch_accuracy", float), default=None, metavar="P",
                    help="predictor recall (default: measured from the trace's guesses, else 0)")
    ap.add_argument("--json", action="store_true", help="print JSON")
    return ap


def resolve_model(args):
    """(spec, budget) from --preset/--model and --vram-gb/--cache-gb (`budget.plan_budget`)."""
    from ..models import load_spec  # needs torch: imported for --model only

    spec = get_preset(args.preset) if args.preset else load_spec(args.model)
    for name in ("vram_gb", "cache_gb"):
        value = getattr(args, name)
        if value is not None and not value >= 0:
            raise bad(name, value)
    return spec, plan_budget(spec, quant=args.quant, dtype=args.dtype,
                             vram_bytes=None if args.vram_gb is None else int(args.vram_gb * GB),
                             cache_bytes=None if args.cache_gb is None else int(args.cache_gb * GB))


def resolve_cpu_gbps(args, spec) -> tuple[float, str]:
    """(--cpu-gbps, "given"), else this machine's CPU measured on an expert of the model's shapes in
    the flags' quant and dtype (as the engine measures it; cached per machine)."""
    if args.cpu_gbps is not None:
        if not args.cpu_gbps >= 0:
            raise bad("cpu_gbps", args.cpu_gbps)
        return args.cpu_gbps, "given"
    from ..runtime.cpu_speed import measure_cpu_gbps  # runs the kernels: only when the flag is not given

    return measure_cpu_gbps(spec.hidden_size, spec.intermediate_size, args.quant, args.dtype), "measured here"


def load_trace(args, spec) -> RoutingTrace:
    """--trace, refused (one line naming both shapes) unless it fits `spec` or --resample-trace."""
    return fit_trace(RoutingTrace.load(args.trace), spec, resample=args.resample_trace)
