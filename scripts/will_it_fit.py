"""The README's "Will it fit?" tables: per supported model and quantization, the host RAM and VRAM it
needs and the decode speed the solver models on 8, 12, 16 and 24 GB cards.

    python scripts/will_it_fit.py                     # print the tables (Markdown)
    python scripts/will_it_fit.py --readme README.md  # and replace them in the README, between the markers

Every number comes from the project's own code, so the tables follow it when it changes: sizes from
the presets (`ModelSpec.store_bytes`, `budget.plan_budget`),
the dtype from the engine's rule (`engine.default_dtype`), the card's budget from the app's rule
(`app.config.default_vram_gb`), tok/s = 1000 / the solver's predicted ms per token for that budget
(`planning.solve_layout` on `solve.default_trace`: synthetic routing calibrated on Mixtral). It is a
model, not a measurement; the assumptions are printed under the tables.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root

START, END = "<!-- will-it-fit:start -->", "<!-- will-it-fit:end -->"
CARDS_GB = (8, 12, 16, 24)
LINK_GBPS = 25.0  # PCIe 4.0 x16 from pinned memory (DESIGN.md)
QUANT_NAMES = {"none": "none ({bits}-bit)", "int8": "int8", "int4": "int4"}


def supported_presets() -> list:
    """(spec, hub id) of every model the app offers (presets.HUB_MODELS: the runnable families)."""
    from moepic_core.presets import HUB_MODELS, PRESETS

    return [(PRESETS[name], repo) for repo, name in HUB_MODELS.items()]


def dtypes() -> tuple[str, str]:
    """(GPU dtype, CPU dtype) the engine picks for a bfloat16 hub checkpoint."""
    from app.models import engine_dtype

    checkpoint = SimpleNamespace(dtype="bfloat16")
    return engine_dtype(checkpoint, cpu=False), engine_dtype(checkpoint, cpu=True)


def card_budget_gb(card_gb: float) -> float:
    """What the app gives the engine on a card with `card_gb` free: the card minus its reserve."""
    from app.config import default_vram_gb

    card = card_gb * 1e9
    return default_vram_gb({"cuda": True, "vram_free_bytes": card, "vram_total_bytes": card}, "cuda")


def model_rows(spec, trace, gpu_dtype: str, cpu_dtype: str, cards=CARDS_GB) -> list[dict]:
    """One row per quantization: RAM with a GPU (the store), RAM without one (store + dense part), the
    engine's minimum VRAM, and the modeled tok/s per card ("–": the card is below the minimum)."""
    from moepic_core.budget import plan_budget
    from moepic_core.runtime.hardware import DEFAULT_CPU_GBPS
    from moepic_core.plan.planning import solve_layout
    from moepic_core.spec import DTYPE_BYTES, QUANTS

    rows = []
    for quant in QUANTS:
        min_vram = plan_budget(spec, quant=quant, dtype=gpu_dtype, cache_bytes=0).min_vram_bytes
        speeds = []
        for card in cards:
            vram = int(card_budget_gb(card) * 1e9)
            if vram < min_vram:
                speeds.append(None)
                continue
            cache = plan_budget(spec, quant=quant, dtype=gpu_dtype, vram_bytes=vram).cache_bytes
            layout = solve_layout(spec, cache, bandwidth_gbps=LINK_GBPS, cpu_gbps=DEFAULT_CPU_GBPS, trace=trace,
                                  quant=quant, dtype=gpu_dtype)
            speeds.append(1000.0 / layout.prediction["ms_per_token"])
        rows.append({"quant": QUANT_NAMES[quant].format(bits=8 * DTYPE_BYTES[gpu_dtype]),
                     "ram_gpu": spec.store_bytes(quant, gpu_dtype),
                     "ram_cpu": spec.store_bytes(quant, cpu_dtype) + spec.dense_bytes(cpu_dtype),
                     "min_vram": min_vram, "tok_s": speeds})
    return rows


def markdown(spec, hub_id: str | None, rows: list[dict], cpu_dtype: str, cards=CARDS_GB) -> str:
    from moepic_core.units import fmt_bytes

    title = f"**{hub_id or spec.name}** ({spec.family}: {spec.num_moe_layers} MoE layers × {spec.num_experts} " \
            f"experts, top-{spec.top_k})"
    head = (f"| quant | host RAM with a GPU | host RAM, CPU only ({cpu_dtype}) | VRAM minimum | "
            + " | ".join(f"{c} GB card" for c in cards) + " |")
    lines = [title, "", head, "|" + "---|" * (4 + len(cards))]
    for r in rows:
        speeds = " | ".join("–" if s is None else f"{s:.1f} tok/s" for s in r["tok_s"])
        lines.append(f"| {r['quant']} | {fmt_bytes(r['ram_gpu'])} | {fmt_bytes(r['ram_cpu'])} | "
                     f"{fmt_bytes(r['min_vram'])} | {speeds} |")
    return "\n".join(lines)


def assumptions(gpu_dtype: str) -> str:
    from moepic_core.budget import CONTEXT_TOKENS
    from moepic_core.plan.costmodel import DEFAULT_DEVICE_GBPS
    from moepic_core.runtime.hardware import DEFAULT_CPU_GBPS

    return (f"Modeled, not measured: the solver's predicted decode time (`moepic_core.plan.costmodel`) for its own "
            f"layout (policy, split and placement per layer), with a PCIe 4.0 x16 link at {LINK_GBPS:g} GB/s, a "
            f"CPU that computes experts from RAM at {DEFAULT_CPU_GBPS:g} GB/s of weight bytes, GPU compute at "
            f"{DEFAULT_DEVICE_GBPS:g} GB/s of memory bandwidth, 16-bit weights on the GPU ({gpu_dtype} here), a KV "
            f"reserve for {CONTEXT_TOKENS} tokens, and routing from a synthetic trace calibrated on Mixtral-8x7B "
            f"at each model's sizes. A card's budget is what the app gives the engine: the card minus max(1 GB, "
            f"5%); the VRAM minimum is `moepic_core.budget.plan_budget`'s. Host RAM with a GPU holds the expert "
            f"store; without one it also holds the dense part. `--quant auto` picks from these numbers "
            f"(`moepic_core/fit.py`).")


def _rows_of(name: str, cards=CARDS_GB) -> tuple[list[dict], float]:
    """One preset's rows and the seconds they took (a top-level function: it runs in worker processes)."""
    from moepic_core.presets import PRESETS
    from moepic_core.cli.solve import default_trace

    spec, start = PRESETS[name], time.perf_counter()
    return model_rows(spec, default_trace(spec), *dtypes(), cards), time.perf_counter() - start


def tables(cards=CARDS_GB, only: list[str] | None = None, jobs: int = 1, log=print) -> str:
    """The Markdown of every supported preset's table (or those in `only`), `jobs` presets at a time."""
    from concurrent.futures import ProcessPoolExecutor

    gpu_dtype, cpu_dtype = dtypes()
    presets = [(spec, hub_id) for spec, hub_id in supported_presets() if not only or spec.name in only]
    names = [spec.name for spec, _ in presets]
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            results = list(pool.map(_rows_of, names, [cards] * len(names)))
    else:
        results = [_rows_of(name, cards) for name in names]
    parts = []
    for (spec, hub_id), (rows, seconds) in zip(presets, results):
        log(f"{spec.name}: {seconds:.0f} s")
        parts.append(markdown(spec, hub_id, rows, cpu_dtype, cards))
    command = "python scripts/will_it_fit.py --readme README.md"
    return "\n\n".join(parts + [assumptions(gpu_dtype), f"Regenerate with `{command}`."])


def replace_section(text: str, body: str) -> str:
    if START not in text or END not in text:
        raise SystemExit(f"error: --readme: the file has no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    return f"{head}{START}\n{body}\n{END}{rest.split(END, 1)[1]}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readme", help="replace the tables between the will-it-fit markers of this file")
    ap.add_argument("--models", nargs="*", help="preset names (default: every supported preset)")
    ap.add_argument("--jobs", type=int, default=1, help="presets solved at once, in separate processes")
    args = ap.parse_args(argv)
    if args.readme and args.models:
        ap.error("--models writes a partial table: leave it out with --readme")
    body = tables(only=args.models, jobs=args.jobs, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(body)
    if args.readme:
        from moepic_core.fsutil import atomic_write_text

        path = Path(args.readme)
        atomic_write_text(path, replace_section(path.read_text(encoding="utf-8"), body))
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
