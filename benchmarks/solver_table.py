"""Modeled decode speed of Mixtral-8x7B layouts on home GPUs, and the cache policies against Belady.
Not part of the test run.

    python benchmarks/solver_table.py [--tokens 800]

Table 1: Mixtral-8x7B int4 and fp16 on 8/12/16/24 GB cards, link 25 GB/s (PCIe 4.0), CPU expert
throughput 40 and 60 GB/s. Columns, ms/token (modeled): transfer only (the solver with everything
over the link: the engine before the CPU path), hybrid whole-expert (whole experts cached, misses
computed on the CPU, no prefetch: the llama.cpp / Fiddler placement, solver-sized), no split (the
solver restricted to whole experts, every placement), hybrid split (the solver: policy auto,
split, placement and prefetch per layer), its tokens/s, the policy it chose, the same layout replayed
on a held-out trace, and the Belady bound (the solver over the offline optimum's curves).
Table 2: hit rate (and admitted misses) per policy at 1..6 of 8 slots beside Belady, on the
shipped demo-model trace and on the synthetic Mixtral trace.
Table 3: solver time (CPU s) for Qwen3-30B-A3B (48 layers x 128 experts), one policy and auto.
Curves come from a synthetic trace calibrated to real Mixtral decoding (seed 0); held-out is seed 1.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moepic_core.budget import plan_budget  # noqa: E402
from moepic_core.plan.planning import AUTO_POLICIES, solve_layout  # noqa: E402
from moepic_core.presets import get_preset  # noqa: E402
from moepic_core.plan.replay import activations, replay_counts  # noqa: E402
from moepic_core.plan.simulate import simulate  # noqa: E402
from moepic_core.plan.synthetic import synthetic_trace  # noqa: E402
from moepic_core.plan.trace import RoutingTrace  # noqa: E402

CARDS = (8, 12, 16, 24)
CPUS = (40.0, 60.0)
LINK = 25.0


def table1(spec, trace, held_out) -> None:
    print(f"Table 1: Mixtral-8x7B, link {LINK:g} GB/s, ms/token (modeled); policy auto; predictor recall from the trace")
    head = (f"{'quant':<5} {'card':>4} {'cache':>6} {'CPU':>4} | {'transfer':>8} {'hyb whole':>9} {'no split':>10} "
            f"{'hyb split':>9} {'tok/s':>6} {'x transfer':>10} {'policy':>13} | {'held-out':>8} {'Belady':>7}")
    print(head)
    print("-" * len(head))
    for quant in ("int4", "none"):
        for card in CARDS:
            try:
                cache = plan_budget(spec, quant=quant, vram_bytes=int(card * 1e9)).cache_bytes
            except ValueError:
                print(f"{quant:<5} {card:>4}  below the minimum VRAM")
                continue
            for cpu in CPUS:
                kw = dict(bandwidth_gbps=LINK, cpu_gbps=cpu, quant=quant)
                lay = solve_layout(spec, cache, trace=trace, policy="auto", **kw)
                p, b = lay.prediction, lay.prediction["baselines"]
                whole = b["solver_no_split"]
                held = simulate(held_out, spec, lay, policy="auto", **kw)["ms_per_token"]
                bound = solve_layout(spec, cache, trace=trace, policy="belady", **kw).prediction["ms_per_token"]
                ms = p["ms_per_token"]
                print(f"{quant:<5} {card:>4} {cache / 1e9:>5.1f}G {cpu:>4g} | {b['transfer_only']:>8.1f} "
                      f"{b['hybrid_whole_expert']:>9.1f} {whole:>10.1f} {ms:>9.1f} {1e3 / ms:>6.1f} "
                      f"{ms / b['transfer_only']:>10.2f} {p['policy']:>13} | {held:>8.1f} {bound:>7.1f}")
    print()


def table2(traces: dict) -> None:
    print("Table 2: hit rate / admitted misses per activation, per policy, at C of 8 slots (every layer)")
    sizes = (1, 2, 3, 4, 6)
    for name, trace in traces.items():
        acts = activations(trace).sum()
        grid = np.repeat(np.array(sizes)[:, None], trace.num_layers, axis=1)
        print(f"{name}: {trace.num_tokens} tokens x {trace.num_layers} layers")
        print(f"  {'policy':<13}" + "".join(f" {'C=' + str(c):>12}" for c in sizes))
        for policy in (*AUTO_POLICIES, "belady"):
            hits, admitted = replay_counts(trace, grid, policy)
            cells = "".join(f" {h / acts:>6.1%}/{a / acts:>4.0%}" for h, a in zip(hits.sum(1), admitted.sum(1)))
            print(f"  {policy:<13}{cells}")
    print()


def table3() -> None:
    spec = get_preset("qwen3-30b-a3b")
    trace = synthetic_trace(256, spec.num_moe_layers, spec.num_experts, spec.top_k, seed=0)
    cache = plan_budget(spec, quant="int4", vram_bytes=12 * 10**9).cache_bytes
    print(f"Table 3: solver CPU time, {spec.name} int4, 12 GB card (cache {cache / 1e9:.1f} GB), CPU 60 GB/s; "
          f"curves measured once per trace (replay: not counted)")
    for policy in ("lru", "auto"):
        kw = dict(bandwidth_gbps=LINK, cpu_gbps=60.0, quant="int4", trace=trace, policy=policy)
        solve_layout(spec, cache, **kw)  # the trace's curves
        p = solve_layout(spec, cache, **kw).prediction
        print(f"  policy {policy:<5} solve {p['solve_cpu_s']:.2f} CPU s ({p['solve_s']:.2f} s wall), baselines "
              f"{p['baselines_s']:.2f} s wall -> {p['ms_per_token']:.2f} ms/token ({p['policy']})")
    print()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=800)
    args = ap.parse_args()
    spec = get_preset("mixtral-8x7b")
    trace = synthetic_trace(args.tokens, spec.num_moe_layers, spec.num_experts, spec.top_k, seed=0)
    held_out = synthetic_trace(args.tokens, spec.num_moe_layers, spec.num_experts, spec.top_k, seed=1)
    table1(spec, trace, held_out)
    demo = RoutingTrace.load(ROOT / "assets" / "demo-model" / "routing_trace.npz")
    table2({"shipped demo-model trace": demo, "synthetic Mixtral trace": trace})
    table3()


if __name__ == "__main__":
    main()
