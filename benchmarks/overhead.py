"""Engine overhead with every expert resident vs transformers' own model, same weights, one process.

Tiny Mixtral (H 256, I 512, 4 layers, 8 experts, top-2), float32, CPU by default. Runs alternate
(engine, transformers eager, transformers default experts) so machine noise hits all alike; the
median of --runs greedy generations of --tokens tokens each is reported, with the ratios.

    python benchmarks/overhead.py [--runs 7] [--tokens 64] [--device cpu|cuda] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moepic_core import Engine  # noqa: E402
from moepic_core.testing import make_tiny_model  # noqa: E402

SIZES = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_local_experts=8, num_experts_per_tok=2,
             num_attention_heads=8, num_key_value_heads=4, vocab_size=1024)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        folder = make_tiny_model("mixtral", Path(tmp) / "m", seed=0, **SIZES)
        engine = Engine.load(folder, device=args.device, dtype="float32", cache_gb=10.0, cache_dir=tmp)
        refs = {impl: AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                          experts_implementation=impl).to(args.device).eval()
                for impl in ("eager", "grouped_mm")}
        ids = torch.tensor([engine.tokenizer("the quick brown fox")["input_ids"]], device=args.device)
        n = args.tokens

        def run_engine():
            assert len(engine.generate(ids[0], n, stop_at_eos=False)) == n

        def run_ref(model):
            def go():
                with torch.inference_mode():
                    out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
                assert out.shape[1] - ids.shape[1] == n
            return go

        contenders = {"engine (all resident)": run_engine, "transformers eager": run_ref(refs["eager"]),
                      "transformers grouped_mm": run_ref(refs["grouped_mm"])}
        for fn in contenders.values():  # warm-up
            fn()
        times = {name: [] for name in contenders}
        for _ in range(args.runs):
            for name, fn in contenders.items():
                times[name].append(timed(fn))
    tps = {name: n / statistics.median(ts) for name, ts in times.items()}
    print(f"tiny Mixtral {SIZES['hidden_size']}x{SIZES['intermediate_size']}, {SIZES['num_hidden_layers']} layers, "
          f"{args.tokens} tokens, median of {args.runs}, device {args.device}, torch threads {torch.get_num_threads()}")
    for name, value in tps.items():
        print(f"  {name:26s} {value:8.1f} tokens/s")
    base = tps["engine (all resident)"]
    print(f"  ratio engine / eager      {base / tps['transformers eager']:.3f}")
    print(f"  ratio engine / grouped_mm {base / tps['transformers grouped_mm']:.3f}   (goal >= 0.9)")


if __name__ == "__main__":
    main()
