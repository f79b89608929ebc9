"""Peak host memory while loading: first load (packs the store from safetensors) and cached load.

The store must be built expert by expert, never holding the whole model twice: the goal is a
peak RSS increase <= 1.3 x (store + dense part). Each load runs in a fresh subprocess that imports
everything first, then reads its RSS before `Engine.load` and its high-water mark (VmHWM) after.

    python benchmarks/load_memory.py [--intermediate 2048] [--quant none|int8|int4]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = r"""
import json, sys, psutil, torch, transformers, moepic_core.runtime.engine, moepic_core.plan.solver
from moepic_core import Engine

def high_water():  # VmHWM is per address space (ru_maxrss would carry the parent's peak across exec)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024

torch.set_num_threads(1)
folder, cache, quant = sys.argv[1:4]
before = psutil.Process().memory_info().rss
assert high_water() - before < 64 << 20, "import peak too far above the current RSS to measure from"
engine = Engine.load(folder, device="cpu", dtype="float32", quant=quant, cache_gb=0, cache_dir=cache)
peak = high_water()
print(json.dumps({"before": before, "peak": peak, "store": engine.runtime.store.nbytes,
                  "dense": engine.budget.dense_bytes}))
"""


def load_once(folder: Path, cache: Path, quant: str) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(cache), quant], capture_output=True, text=True,
                       cwd=ROOT, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--intermediate", type=int, default=2048)
    ap.add_argument("--quant", default="none")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from moepic_core.testing import make_tiny_model

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = make_tiny_model("mixtral", tmp / "m", hidden_size=512, intermediate_size=args.intermediate,
                                 num_hidden_layers=4, num_local_experts=8, vocab_size=1024)
        for label in ("first load (packs the store)", "cached load (memory-mapped)"):
            m = load_once(folder, tmp / "cache", args.quant)
            grown = m["peak"] - m["before"]
            ratio = grown / (m["store"] + m["dense"])
            rows.append({"load": label, **m, "grown": grown, "ratio": ratio})
            print(f"{label:30s} store {m['store'] / 1e6:7.1f} MB  dense {m['dense'] / 1e6:6.1f} MB  "
                  f"peak RSS growth {grown / 1e6:7.1f} MB  = {ratio:.2f} x (store + dense)   goal <= 1.3")
    return rows


if __name__ == "__main__":
    main()
