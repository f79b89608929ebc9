"""MoEpic against llama.cpp on the same model, same machine, same threads, in one run.

    python benchmarks/peer_llamacpp.py [--threads 2] [--tokens 32] [--rounds 2] [--work DIR]

The model is a seeded random Mixtral-dimension model (H 4096, I 14336, 8 experts, top-2, 2 decoder
layers, vocab 32000, bf16 checkpoint): the expert and dense shapes of Mixtral-8x7B, small enough
for 24 GB of RAM. llama.cpp converts it with its own `convert_hf_to_gguf.py` (BF16) and
`llama-quantize` (Q8_0, Q4_0) and decodes with `llama-bench -n TOKENS -p 0`; MoEpic decodes the
same number of tokens with everything resident, in place (`--cpu-mode in-place`), in a fresh
process per run. The two alternate, `--rounds` times each, and the best run of each counts.

llama.cpp comes from the source archive of the PyPI package llama-cpp-python==0.3.36 (its
`vendor/llama.cpp`), built once into `<work>/build` (llama-bench and llama-quantize, about 15
minutes on 2 cores). Its converter refuses an unknown BPE pre-tokenizer; the tokenizer does not
matter for speed, so `TextModel.get_vocab_base_pre` is overridden for the conversion (and the
byte-level BPE tokenizer goes straight to the GPT-2 vocabulary path). Where
llama.cpp cannot be built (no cmake or compiler, no package index) the script says why and exits 0
after the MoEpic rows.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LLAMA_PACKAGE = "llama-cpp-python==0.3.36"
FORMATS = [("bf16", "none", "BF16"), ("int8", "int8", "Q8_0"), ("int4", "int4", "Q4_0")]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=32, help="decode tokens per run")
    p.add_argument("--rounds", type=int, default=2, help="alternating runs of each tool per format")
    p.add_argument("--work", default=str(Path.home() / ".cache" / "moepic-bench"), help="model, GGUF and build cache")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--formats", default="bf16,int8,int4")
    p.add_argument("--moepic-only", action="store_true", help="skip llama.cpp")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--moepic-run", help=argparse.SUPPRESS)  # internal: one MoEpic measurement, JSON on stdout
    p.add_argument("--quant", default="none", help=argparse.SUPPRESS)
    p.add_argument("--dense-quant", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --- the model -----------------------------------------------------------------------------------
def make_model(folder: Path, layers: int) -> Path:
    """A seeded random Mixtral-dimension model in bf16 with a tiny tokenizer (cached)."""
    if (folder / "config.json").exists() and any(folder.glob("*.safetensors")):
        return folder
    import torch
    from transformers import AutoModelForCausalLM, MixtralConfig

    from moepic_core.testing import make_tiny_tokenizer

    config = MixtralConfig(hidden_size=4096, intermediate_size=14336, num_local_experts=8, num_experts_per_tok=2,
                           num_hidden_layers=layers, num_attention_heads=32, num_key_value_heads=8,
                           vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
                           bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, dtype="bfloat16")
    torch.manual_seed(0)
    print(f"making the random model in {folder} (about 6 GB)", flush=True)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, max_shard_size="2GB")
    make_tiny_tokenizer(tmp)
    tmp.rename(folder)
    return folder


# --- llama.cpp -----------------------------------------------------------------------------------
def llama_sources(work: Path) -> Path:
    src = work / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp"
    if src.exists():
        return src
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", LLAMA_PACKAGE,
                    "-d", str(work)], check=True, capture_output=True)
    with tarfile.open(next(work.glob("llama_cpp_python-0.3.36.tar.gz"))) as tar:
        tar.extractall(work, filter="data")
    return src


def build_llama(work: Path) -> tuple[Path, Path]:
    src, build = llama_sources(work), work / "build"
    bench, quantize = build / "bin" / "llama-bench", build / "bin" / "llama-quantize"
    if bench.exists() and quantize.exists():
        return bench, quantize
    for tool in ("cmake", "c++"):
        if not shutil.which(tool):
            raise RuntimeError(f"{tool} not found")
    print("building llama.cpp's llama-bench and llama-quantize (once; ~15 min on 2 cores)", flush=True)
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run(["cmake", "-S", str(src), "-B", str(build), *generator, "-DCMAKE_BUILD_TYPE=Release",
                    "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                    "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_OPENSSL=OFF"],
                   check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build), "--target", "llama-bench", "llama-quantize", "-j",
                    str(os.cpu_count() or 2)], check=True, capture_output=True)
    return bench, quantize


CONVERT = """
import runpy, sys
sys.path[:0] = [{src!r}, {gguf!r}]
from conversion import base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "default"  # speed test: any pre-tokenizer
base.TextModel._set_vocab_sentencepiece = base.TextModel._set_vocab_gpt2  # our tokenizer is a byte-level BPE
sys.argv = ["convert_hf_to_gguf.py", {model!r}, "--outtype", "bf16", "--outfile", {out!r}]
runpy.run_path({script!r}, run_name="__main__")
"""


def make_ggufs(work: Path, model: Path, quantize: Path, kinds: list[str]) -> dict[str, Path]:
    src = llama_sources(work)
    out = {kind: work / f"{model.name}-{kind}.gguf" for kind in kinds}
    bf16 = work / f"{model.name}-BF16.gguf"
    if not bf16.exists():
        print("converting with llama.cpp's convert_hf_to_gguf.py (BF16)", flush=True)
        code = CONVERT.format(src=str(src), gguf=str(src / "gguf-py"), model=str(model), out=str(bf16) + ".tmp",
                              script=str(src / "convert_hf_to_gguf.py"))
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        os.replace(str(bf16) + ".tmp", bf16)
    for kind, path in out.items():
        if kind != "BF16" and not path.exists():
            print(f"llama-quantize {kind}", flush=True)
            subprocess.run([str(quantize), str(bf16), str(path) + ".tmp", kind], check=True, capture_output=True)
            os.replace(str(path) + ".tmp", path)
    return out


def run_llama(bench: Path, gguf: Path, threads: int, tokens: int) -> float:
    """llama-bench's decode tokens/s (mean over its repetitions)."""
    res = subprocess.run([str(bench), "-m", str(gguf), "-t", str(threads), "-n", str(tokens), "-p", "0", "-r", "3",
                          "-o", "json"], check=True, capture_output=True, text=True)
    return float(json.loads(res.stdout)[0]["avg_ts"])


# --- MoEpic --------------------------------------------------------------------------------------
def moepic_measure(model: str, quant: str, dense_quant: str | None, threads: int, tokens: int) -> dict:
    """Load in place and decode `tokens` greedy tokens twice (the first run warms the page cache)."""
    import torch

    from moepic_core import Engine

    torch.set_num_threads(threads)
    start = time.perf_counter()
    engine = Engine.load(model, device="cpu", dtype="bfloat16", quant=quant, dense_quant=dense_quant,
                         cpu_mode="in-place")
    load_s = time.perf_counter() - start
    ids = list(range(10, 18))
    best = None
    for _ in range(2):
        engine.reset_stats()
        engine.generate(ids, tokens + 1, stop_at_eos=False)
        stats = engine.runtime.stats
        rate = stats.tokens / stats.decode_seconds
        best = rate if best is None else max(best, rate)
    return {"tokens_per_s": best, "load_s": load_s, "kernels": engine.kernels, "mode": engine.mode}


def run_moepic(model: Path, quant: str, dense_quant: str | None, threads: int, tokens: int) -> dict:
    cmd = [sys.executable, __file__, "--moepic-run", str(model), "--quant", quant, "--threads", str(threads),
           "--tokens", str(tokens)] + (["--dense-quant", dense_quant] if dense_quant else [])
    res = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(res.stdout.strip().splitlines()[-1])


# --- the table -----------------------------------------------------------------------------------
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.moepic_run:
        dense = None if args.dense_quant in (None, "same") else args.dense_quant
        print(json.dumps(moepic_measure(args.moepic_run, args.quant, dense, args.threads, args.tokens)))
        return 0
    work = Path(args.work).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    model = make_model(work / f"mixtral-dims-{args.layers}l", args.layers)
    formats = [f for f in FORMATS if f[0] in args.formats.split(",")]
    llama = None
    if not args.moepic_only:
        try:
            bench, quantize = build_llama(work)
            ggufs = make_ggufs(work, model, quantize, [f[2] for f in formats])
            llama = (bench, ggufs)
        except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
            detail = getattr(e, "stderr", b"") or b""
            detail = detail.decode() if isinstance(detail, bytes) else detail
            print(f"llama.cpp unavailable, MoEpic rows only: {e} {detail[-500:]}", flush=True)
    rows = []
    for name, quant, kind in formats:
        dense_variants = [None] if quant == "none" else [None, "none"]
        ours = {d: [] for d in dense_variants}
        theirs = []
        for _ in range(args.rounds):
            if llama:
                theirs.append(run_llama(llama[0], llama[1][kind], args.threads, args.tokens))
            for d in dense_variants:
                ours[d].append(run_moepic(model, quant, d, args.threads, args.tokens))
        for d in dense_variants:
            best = max(r["tokens_per_s"] for r in ours[d])
            peer = max(theirs) if theirs else None
            rows.append({"format": name, "llama_cpp": kind, "dense": "same as experts" if d is None else "bf16",
                         "moepic_tok_s": best, "moepic_runs": [r["tokens_per_s"] for r in ours[d]],
                         "llama_tok_s": peer, "llama_runs": theirs, "ratio": best / peer if peer else None,
                         "kernels": ours[d][0]["kernels"]})
    print(f"\nDecode, {args.layers}-layer Mixtral-dimension model, {args.threads} threads, {args.tokens} tokens, "
          f"best of {args.rounds} alternating runs each:\n")
    print("| MoEpic | dense part | llama.cpp | MoEpic tok/s | llama.cpp tok/s | ratio |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        peer = f"{r['llama_tok_s']:.1f}" if r["llama_tok_s"] else "n/a"
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] else "n/a"
        print(f"| {r['format']} | {r['dense']} | {r['llama_cpp']} | {r['moepic_tok_s']:.1f} | {peer} | {ratio} |")
    if rows:
        print(f"\nMoEpic kernels: {rows[0]['kernels']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
