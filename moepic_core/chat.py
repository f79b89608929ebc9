"""Command line: stream one answer from an MoE model with offloaded experts.

    python -m moepic_core.chat --model demo --cache-gb 0.005 --prompt "Good morrow, sir"

Bad input ends with one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .cache.policies import POLICY_CHOICES
from .config import CPU_MODES, DTYPES
from .spec import QUANTS


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m moepic_core.chat", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="model folder, downloaded hub id, or 'demo'")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--vram-gb", type=float, help="everything the engine may use on the device, in GB")
    budget.add_argument("--cache-gb", type=float, help="the expert cache alone, in GB")
    p.add_argument("--device", default="auto", help="cpu, cuda[:N] or auto (default)")
    p.add_argument("--dtype", choices=DTYPES, help="compute dtype (default: float32 on CPU, half on CUDA)")
    p.add_argument("--quant", choices=QUANTS, default="none", help="expert quantization in host RAM and cache")
    p.add_argument("--policy", default="auto", help=f"cache policy: {', '.join(POLICY_CHOICES)} "
                                                    "(default auto: the best by replaying the calibration trace)")
    p.add_argument("--split", default=None, help="split ratio in (0, 1] for every layer, or 'auto' (solver)")
    p.add_argument("--cpu-mode", choices=CPU_MODES, default="auto",
                   help="CPU only: in-place computes every expert where it lies in RAM (fastest; default for a "
                        "real model), simulated holds a VRAM-sized cache in RAM to show it at work (default for "
                        "the demo or when --vram-gb/--cache-gb is given)")
    p.add_argument("--dense-quant", choices=QUANTS, default=None,
                   help="CPU only: quantization of the dense linears (default: the same as --quant)")
    p.add_argument("--prompt", required=True, help="the user's message (or raw text with --raw)")
    p.add_argument("--system", help="system message for the chat template")
    p.add_argument("--raw", action="store_true", help="tokenise the prompt as is, without the chat template")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--ids-json", help="write the new token ids here as a JSON list")
    p.add_argument("--stats-json", help="write engine.snapshot() here as JSON")
    p.add_argument("--cache-dir", help="where packed expert stores are kept (default ~/.cache/moepic)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    from .engine import Engine
    from .errors import GenerationError
    from .fsutil import atomic_write_text
    from .text import IncrementalDetokenizer, chat_input_ids

    if not args.prompt.strip():
        raise GenerationError("empty prompt: give --prompt some text")
    split = None if args.split in (None, "auto") else float(args.split)
    engine = Engine.load(args.model, vram_gb=args.vram_gb, cache_gb=args.cache_gb, device=args.device,
                         dtype=args.dtype, quant=args.quant, policy=args.policy, split=split,
                         cache_dir=args.cache_dir, cpu_mode=args.cpu_mode, dense_quant=args.dense_quant)
    snap = engine.snapshot()
    print(f"[{snap['model']}: {snap['mode']} mode, {snap['dtype']}, experts {snap['quant']}, kernels: "
          f"{snap['kernels']}]", file=sys.stderr)
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
        atomic_write_text(args.stats_json, json.dumps(engine.snapshot(), indent=1))
    t = engine.snapshot()["totals"]
    print(f"[{t['tokens']} tokens, {t['tokens_per_s']:.1f} tok/s, hit rate {t['hit_rate']:.0%}, "
          f"{t['bytes_per_token'] / 1e6:.2f} MB fetched/token]", file=sys.stderr)


def main(argv=None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    args = parse_args(argv)
    from .errors import MoepicError

    try:
        run(args)
    except (MoepicError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\n[cancelled]", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
