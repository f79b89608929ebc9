"""Modeled ms/token of cache layouts for Mixtral-8x7B dimensions, on a synthetic trace calibrated to
real Mixtral decode routing. Not part of the test run.

    python benchmarks/solver_table.py [--tokens 1000]

Table 1 (25 GB/s, fp16 and int4, budgets 0.25..4 experts per layer): uniform LRU without split, the
best single uniform split (LRU), solver+LCP, solver+LRU, the Belady bound (solver over the offline
optimum's hit-rate curves), and solver+LCP replayed by the simulator on a held-out trace.
Table 2: where the split wins: the solver against the same solver restricted to r = 1, across
bandwidths, compute speeds and predictor recalls.
Hit-rate curves come from one trace (seed 0); "held-out" replays the solver's layout on another (seed 1).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moepic_core.costmodel import build_cost_model  # noqa: E402
from moepic_core.presets import get_preset  # noqa: E402
from moepic_core.simulate import simulate  # noqa: E402
from moepic_core.solver import (best_uniform, model_accuracy, model_curves, optimize, solve_layout,  # noqa: E402
                                uniform)
from moepic_core.synthetic import MIXTRAL_TARGETS, calibration_report, params_dict, synthetic_trace  # noqa: E402

BUDGETS = (0.25, 0.5, 1, 1.5, 2, 3, 4)  # experts per layer


def calibration(trace) -> None:
    print(f"synthetic trace: {trace.num_tokens} tokens x {trace.num_layers} layers, params {params_dict()}")
    rep = calibration_report(trace)
    print(f"{'statistic':<22} {'synthetic':>9} {'real Mixtral':>12}")
    for key, target in MIXTRAL_TARGETS.items():
        print(f"{key:<22} {rep[key]:>9.1%} {target:>12.0%}")
    rec = trace.prediction_recall()
    print(f"recorded predictor (guess from the previous layer's pair): recall {rec[1:].mean():.1%}\n")


def table1(spec, trace, held_out, bw: float) -> None:
    print(f"Table 1: Mixtral-8x7B dims, {bw:g} GB/s, ms/token (modeled); predictor recall measured from the trace")
    head = (f"{'quant':<5} {'exp/layer':>9} {'GB':>6} | {'uni LRU r=1':>11} {'best uni split':>17} | "
            f"{'solver+LCP':>10} {'solver+LRU':>10} {'Belady':>8} | {'held-out':>8} {'CPU ms':>8}")
    print(head)
    print("-" * len(head))
    for quant in ("none", "int4"):
        S = spec.expert_bytes(quant)
        kw = dict(bandwidth_gbps=bw, trace=trace, quant=quant)
        for e in BUDGETS:
            budget = int(e * spec.num_moe_layers * S)
            lcp = solve_layout(spec, budget, policy="lcp", **kw)
            lru = solve_layout(spec, budget, policy="lru", **kw)
            bel = solve_layout(spec, budget, policy="belady", **kw)
            start = time.process_time()  # CPU ms of one solve (curves already computed)
            solve_layout(spec, budget, policy="lcp", **kw)
            wall = (time.process_time() - start) * 1e3
            cm = build_cost_model(spec, model_curves(spec, trace, "lru"), model_accuracy(spec, trace, None),
                                  bandwidth_gbps=bw, quant=quant)
            units = budget // cm.unit_bytes
            bu = best_uniform(cm, units)
            sim = simulate(held_out, spec, lcp, policy="lcp", bandwidth_gbps=bw, quant=quant)["ms_per_token"]
            print(f"{quant:<5} {e:>9g} {budget / 1e9:>6.1f} | {uniform(cm, units).ms_per_token:>11.1f} "
                  f"{bu.ms_per_token:>10.1f} r={cm.ratios[bu.split[0]]:<4.2f} | "
                  f"{lcp.prediction['ms_per_token']:>10.1f} {lru.prediction['ms_per_token']:>10.1f} "
                  f"{bel.prediction['ms_per_token']:>8.1f} | {sim:>8.1f} {wall:>8.0f}")
    print()


def whole_only(cm):
    last = len(cm.ratios) - 1
    return replace(cm, ratios=cm.ratios[last:], slot_units=cm.slot_units[last:])


REGIMES = (  # (label, host->device GB/s, device GB/s for the compute times)
    ("PCIe4 25, GPU 400", 25.0, 400.0),
    ("64, GPU 400", 64.0, 400.0),
    ("64, GPU 100", 64.0, 100.0),
    ("25, compute 30", 25.0, 30.0),
)


def table2(spec, trace) -> None:
    print("Table 2: gain of the split: solver+LRU vs the same solver restricted to r = 1 (whole experts).")
    print("Cells: whole-only ms, with-split ms, gain, [mean split ratio of cached layers]. Columns: host->device "
          "GB/s and the device memory GB/s that sets compute time (expert_ms = bytes / that); recall = predictor "
          "recall assumed (0.36 ~ the trace's own guesses, 0.85 ~ a router-based predictor)")
    print(f"{'quant':<5} {'recall':>6} {'exp/l':>5} | " + " | ".join(f"{r[0]:^29}" for r in REGIMES))
    for quant in ("none", "int4"):
        for recall in (0.36, 0.85):
            for e in (0.25, 0.5, 1, 2, 4):
                cells = []
                for _, bw, dev in REGIMES:
                    cm = build_cost_model(spec, model_curves(spec, trace, "lru"), [recall] * spec.num_moe_layers,
                                          bandwidth_gbps=bw, quant=quant, compute_ms={"device_gbps": dev})
                    units = int(e * spec.num_moe_layers * spec.expert_bytes(quant)) // cm.unit_bytes
                    split, whole = optimize(cm, units), optimize(whole_only(cm), units)
                    rs = [cm.ratios[m] for c, m in zip(split.slots, split.split) if c]
                    gain = 1 - split.ms_per_token / whole.ms_per_token
                    cells.append(f"{whole.ms_per_token:8.1f} {split.ms_per_token:8.1f} {gain:+5.1%} "
                                 f"[{(sum(rs) / len(rs)) if rs else 1:.2f}]")
                print(f"{quant:<5} {recall:>6.2f} {e:>5g} | " + " | ".join(cells))
    print()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1000)
    args = ap.parse_args()
    spec = get_preset("mixtral-8x7b")
    trace = synthetic_trace(args.tokens, spec.num_moe_layers, spec.num_experts, spec.top_k, seed=0)
    held_out = synthetic_trace(args.tokens, spec.num_moe_layers, spec.num_experts, spec.top_k, seed=1)
    calibration(trace)
    table1(spec, trace, held_out, 25.0)
    table2(spec, trace)


if __name__ == "__main__":
    main()
