"""Command line: stream one answer from an MoE model with offloaded experts.

    python -m moepic_core.chat --model demo --cache-gb 0.005 --prompt "Good morrow, sir"

Bad input ends with one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from ..cache.policies import POLICY_CHOICES
from ..config import CPU_MODES
from ..fit import AUTO, QUANT_CHOICES
from ..options import DTYPES, OneLineParser, parsed, ratio_or_auto
from ..spec import QUANTS


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(prog="python -m moepic_core.chat", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="model folder, downloaded hub id, or 'demo'")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--vram-gb", type=parsed("vram_gb", float), metavar="GB",
                        help="everything the engine may use on the device, in GB")
    budget.add_argument("--cache-gb", type=parsed("cache_gb", float), metavar="GB", help="the expert cache alone, in GB")
    p.add_argument("--device", default="auto", help="cpu, cuda[:N] or auto (default)")
    p.add_argument("--dtype", type=parsed("dtype", choices=DTYPES), metavar="{" + ",".join(DTYPES) + "}",
                   help="compute dtype (default: the engine's choice for the device)")
    p.add_argument("--quant", type=parsed("quant", choices=QUANT_CHOICES), default=AUTO,
                   metavar="{" + ",".join(QUANT_CHOICES) + "}",
                   help="expert quantization in host RAM and cache (default auto: the best quality that fits "
                        "the free RAM and disk, said on stderr)")
    p.add_argument("--policy", type=parsed("policy", choices=POLICY_CHOICES), default="auto",
                   metavar="{" + ",".join(POLICY_CHOICES) + "}",
                   help="cache policy (default auto: the best by replaying the calibration trace)")
    p.add_argument("--split", type=parsed("split", ratio_or_auto), default="auto", metavar="R|auto",
                   help="split ratio in (0, 1] for every layer, or 'auto' (default: the solver's layout)")
    p.add_argument("--cpu-mode", type=parsed("cpu_mode", choices=CPU_MODES), default="auto",
                   metavar="{" + ",".join(CPU_MODES) + "}",
                   help="CPU only: in-place computes every expert where it lies in RAM (fastest; default for a "
                        "real model), simulated holds a VRAM-sized cache in RAM to show it at work (default for "
                        "the demo or when --vram-gb/--cache-gb is given)")
    p.add_argument("--dense-quant", type=parsed("dense_quant", choices=QUANTS), default=None,
                   metavar="{" + ",".join(QUANTS) + "}",
                   help="CPU only: quantization of the dense linears (default: the same as --quant)")
    p.add_argument("--prompt", required=True, help="the user's message (or raw text with --raw)")
    p.add_argument("--system", help="system message for the chat template")
    p.add_argument("--raw", action="store_true", help="tokenise the prompt as is, without the chat template")
    p.add_argument("--max-new-tokens", type=parsed("max_new_tokens", int), default=128, metavar="N")
    p.add_argument("--temperature", type=parsed("temperature", float), default=0.0, metavar="T",
                   help="0 = greedy (default)")
    p.add_argument("--top-p", type=parsed("top_p", float), default=1.0, metavar="P")
    p.add_argument("--seed", type=parsed("seed", int), default=None, metavar="S")
    p.add_argument("--ids-json", help="write the new token ids here as a JSON list")
    p.add_argument("--stats-json", help="write engine.snapshot() here as JSON")
    p.add_argument("--cache-dir", help="where packed expert stores are kept (default ~/.cache/moepic)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    from ..runtime.engine import Engine
    from ..errors import GenerationError
    from ..fsutil import atomic_write_text
    from ..runtime.text import IncrementalDetokenizer, chat_input_ids

    if not args.prompt.strip():
        raise GenerationError("empty prompt: give --prompt some text")
    engine = Engine.load(args.model, vram_gb=args.vram_gb, cache_gb=args.cache_gb, device=args.device,
                         dtype=args.dtype, quant=args.quant, policy=args.policy, split=args.split,
                         cache_dir=args.cache_dir, cpu_mode=args.cpu_mode, dense_quant=args.dense_quant)
    snap = engine.snapshot()
    print(f"[{snap.model}: {snap.mode} mode, {snap.dtype}, kernels: {snap.kernels}; "
          f"{engine.fit.message()}]", file=sys.stderr)
    if engine.tokenizer is None:
        raise GenerationError(f"{args.model} has no tokenizer")
    if args.raw:
        ids = engine.tokenizer(args.prompt)["input_ids"]
    else:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": args.prompt}]
        ids = chat_input_ids(engine.tokenizer, messages)
    detok, new_ids = IncrementalDetokenizer(engine.tokenizer), []
    for token in engine.tokens(ids, args.max_new_tokens, do_sample=args.temperature > 0,
                               temperature=args.temperature or 1.0, top_p=args.top_p, seed=args.seed):
        new_ids.append(token)
        sys.stdout.write(detok.add(token))
        sys.stdout.flush()
    sys.stdout.write(detok.flush() + "\n")
    if args.ids_json:
        atomic_write_text(args.ids_json, json.dumps(new_ids))
    if args.stats_json:
        atomic_write_text(args.stats_json, json.dumps(engine.snapshot().to_json(), indent=1))
    print(summary(engine.snapshot()), file=sys.stderr)


def summary(snap) -> str:
    """The stderr line after an answer (`snap`: a Snapshot); layers by their decoder-layer index, as the
    app and the other CLIs number them."""
    t = snap.totals
    acts = t.hits + t.misses
    split = f" (full {t.full_hits / acts:.0%}, top {t.top_hits / acts:.0%})" if acts else ""
    layers = ", ".join(f"{l.layer}: {l.hit_rate:.0%}" for l in snap.layers if l.accesses)
    return (f"[{t.tokens} tokens, {t.tokens_per_s:.1f} tok/s, hit rate {t.hit_rate:.0%}{split}, "
            f"{t.bytes_per_token / 1e6:.2f} MB fetched/token" + (f"; hit rate by decoder layer {layers}" if layers
                                                                  else "") + "]")


def main(argv=None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    args = parse_args(argv)
    from ..errors import MoepicError
    from ..options import exit_with

    try:
        run(args)
    except MoepicError as e:
        return exit_with(e)
    except KeyboardInterrupt:
        print("\n[cancelled]", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
