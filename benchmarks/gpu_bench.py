"""One-GPU benchmark: pinned H2D bandwidth, CUDA-vs-CPU check, expert kernels, tokens/s of layouts.

Default: a Mixtral-dimension model with 4 layers (H 4096, I 14336, 8 experts, top-2, fp16, random
weights; ~11 GB of experts) written as per-expert safetensors, then through the engine:
all experts resident, a 25% cache at split 0.5 and the same 25% cache at split 1.0 (the best
no-split layout at that budget). For each: tokens/s, hit rate, bytes moved per token, and that
traffic over the decode time against the measured pinned bandwidth. Before that, one expert per
format (half, int8, int4): the kernel's ms beside the ms to fetch its bytes over the link, and the
kernel's peak temporaries on the device (the bounded workspace the budget reserves).
`--cpu` runs the same steps on a tiny model on the CPU (the test suite calls it).

    python benchmarks/gpu_bench.py            # needs CUDA, < 5 minutes on one H200
    python benchmarks/gpu_bench.py --cpu      # seconds, no GPU
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moepic_core import Engine  # noqa: E402
from moepic_core.testing import make_tiny_model, make_tiny_tokenizer, tiny_config  # noqa: E402

BIG = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=4, num_local_experts=8, num_experts_per_tok=2,
           num_attention_heads=32, num_key_value_heads=8, vocab_size=32000)
SMALL = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_local_experts=8, num_experts_per_tok=2,
             num_attention_heads=8, num_key_value_heads=4, vocab_size=1024)


def write_random_mixtral(folder: Path, sizes: dict, device: str) -> Path:
    """A random fp16 Mixtral with per-expert checkpoint keys, one safetensors file per layer."""
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    config = tiny_config("mixtral", **sizes, initializer_range=0.02)
    config.save_pretrained(folder)
    make_tiny_tokenizer(folder, vocab_size=min(sizes["vocab_size"], 320))
    g = torch.Generator(device=device).manual_seed(0)
    H, I = sizes["hidden_size"], sizes["intermediate_size"]

    def rand(*shape, std=0.02):
        return (torch.randn(*shape, generator=g, device=device, dtype=torch.float16) * std).cpu()

    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config)
    dense = {}
    for name, p in skeleton.state_dict().items():
        if ".experts." in name:
            continue
        key = name.replace(".mlp.", ".block_sparse_moe.")
        dense[key] = torch.ones(p.shape, dtype=torch.float16) if "norm" in name else rand(*p.shape)
    index = {}
    save_file(dense, folder / "dense.safetensors")
    index.update({k: "dense.safetensors" for k in dense})
    for layer in range(sizes["num_hidden_layers"]):
        shard = {}
        for e in range(sizes["num_local_experts"]):
            prefix = f"model.layers.{layer}.block_sparse_moe.experts.{e}"
            shard[f"{prefix}.w1.weight"] = rand(I, H)
            shard[f"{prefix}.w3.weight"] = rand(I, H)
            shard[f"{prefix}.w2.weight"] = rand(H, I)
        name = f"experts-{layer}.safetensors"
        save_file(shard, folder / name)
        index.update({k: name for k in shard})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    return folder


def pinned_bandwidth_gbps(device: str) -> float | None:
    if device != "cuda":
        return None
    sizes = [64 << 20, 128 << 20, 256 << 20]
    results = []
    for size in sizes:
        src = torch.empty(size, dtype=torch.uint8, pin_memory=True)
        dst = torch.empty(size, dtype=torch.uint8, device="cuda")
        for _ in range(5):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src, non_blocking=True)
            end.record()
            end.synchronize()
            results.append(size / (start.elapsed_time(end) / 1e3) / 1e9)
    return statistics.median(results)


def check_cuda_vs_cpu(tmp: Path, device: str) -> str:
    """Tiny float32 model: engine on `device` vs engine on the CPU, tokens and last logits."""
    folder = make_tiny_model("mixtral", tmp / "check", seed=1)
    kw = dict(dtype="float32", split=0.5, cache_gb=0.0002, cache_dir=str(tmp))
    a = Engine.load(folder, device="cpu", **kw)
    b = Engine.load(folder, device=device, **kw)
    ids = a.tokenizer("hello world, the experts")["input_ids"]
    ta, tb = a.generate(ids, 24, stop_at_eos=False), b.generate(ids, 24, stop_at_eos=False)
    full = torch.tensor([ids + ta])
    with torch.no_grad():
        la = a.model(full).logits[0, -1]
        lb = b.model(full.to(device)).logits[0, -1].cpu()
    diff = (la - lb).abs().max().item()
    return f"{device} vs cpu: tokens {'identical' if ta == tb else 'DIFFER'}, max |logit diff| {diff:.2e}"


def kernel_rows(device: str, dtype: str, hidden: int, inter: int) -> list[dict]:
    """One expert per format: kernel ms (median of 10, batch 1), fetch ms (pinned host -> device),
    peak temporaries of the kernel on the device."""
    from moepic_core.runtime.kernels import ExpertKernel
    from moepic_core.runtime.quant import TORCH_DTYPES, encode_expert

    torch.manual_seed(0)
    w = [torch.randn(inter, hidden) * 0.02, torch.randn(inter, hidden) * 0.02, torch.randn(hidden, inter) * 0.02]
    x = torch.randn(1, hidden, dtype=TORCH_DTYPES[dtype], device=device)
    rows = []
    for quant in ("none", "int8", "int4"):
        host = encode_expert(*w, quant, dtype)
        if device == "cuda":
            host = host.pin_memory()
        dev = torch.empty_like(host, device=device)
        kernel = ExpertKernel(quant, dtype, hidden, inter, torch.device(device), TORCH_DTYPES[dtype])

        def timed(fn) -> float:
            times = []
            for _ in range(10):
                if device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                fn()
                if device == "cuda":
                    torch.cuda.synchronize()
                times.append((time.perf_counter() - start) * 1e3)
            return statistics.median(times)

        fetch_ms = timed(lambda: dev.copy_(host, non_blocking=True))
        kernel.segment(x, dev)
        peak = None
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            kernel.segment(x, dev)
            peak = (torch.cuda.max_memory_allocated() - base) / 1e6
        rows.append({"format": f"{dtype}" if quant == "none" else quant, "mb": host.numel() / 1e6,
                     "kernel_ms": timed(lambda: kernel.segment(x, dev)), "fetch_ms": fetch_ms,
                     "peak_temp_mb": peak, "kernels": "native" if kernel.native else "torch"})
    return rows


def measure(folder: Path, device: str, dtype: str, label: str, tokens: int, **options) -> dict:
    engine = Engine.load(folder, device=device, dtype=dtype, **options)
    ids = engine.tokenizer("the quick brown fox jumps over")["input_ids"]
    engine.generate(ids, 4, stop_at_eos=False)  # warm-up: kernels, allocator
    engine.reset_stats()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    engine.generate(ids, tokens, stop_at_eos=False)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    snap = engine.snapshot()
    t = snap.totals
    decode_s = engine.runtime.stats.decode_seconds
    row = {"config": label, "tokens_per_s": t.tokens / decode_s if decode_s else 0.0,
           "wall_tokens_per_s": tokens / seconds, "hit_rate": t.hit_rate,
           "mb_per_token": t.bytes_fetched / max(1, t.tokens) / 1e6,
           "gbps_moved": t.bytes_fetched / decode_s / 1e9 if decode_s else 0.0,
           "cache_gb": snap.budgets.cache_bytes / 1e9,
           "split": sorted({l.split_ratio for l in snap.layers}),
           "slots": [l.slots for l in snap.layers]}
    del engine
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu", action="store_true", help="tiny model on the CPU (for tests)")
    ap.add_argument("--tokens", type=int, default=None)
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    device = "cpu" if args.cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: no CUDA GPU; run with --cpu for the CPU version")
    sizes, dtype = (SMALL, "float32") if args.cpu else (BIG, "float16")
    tokens = args.tokens or (16 if args.cpu else 32)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        folder = write_random_mixtral(tmp / "model", sizes, device)
        print(f"model written in {time.perf_counter() - t0:.1f} s")
        bandwidth = pinned_bandwidth_gbps(device)
        print(check_cuda_vs_cpu(tmp, device) if device == "cuda" else "cpu mode: no CUDA-vs-CPU check")
        from moepic_core.models import load_spec

        krows = kernel_rows(device, dtype, sizes["hidden_size"], sizes["intermediate_size"])
        print(f"\none expert (H {sizes['hidden_size']}, I {sizes['intermediate_size']}), batch 1:")
        print(f"{'format':10s} {'MB':>8s} {'kernel ms':>10s} {'fetch ms':>9s} {'peak temp MB':>13s}  kernels")
        for r in krows:
            peak = f"{r['peak_temp_mb']:13.1f}" if r["peak_temp_mb"] is not None else "          n/a"
            print(f"{r['format']:10s} {r['mb']:8.1f} {r['kernel_ms']:10.3f} {r['fetch_ms']:9.3f} {peak}  {r['kernels']}")
        spec = load_spec(folder)
        quarter = 0.25 * spec.store_bytes("none", dtype) / 1e9
        common = dict(cache_dir=str(tmp))
        rows = [measure(folder, device, dtype, "all resident", tokens, cache_gb=1.05 * 4 * quarter, **common),
                measure(folder, device, dtype, "25% cache, split 0.5", tokens, cache_gb=quarter, split=0.5, **common),
                measure(folder, device, dtype, "25% cache, split 1.0", tokens, cache_gb=quarter, split=1.0, **common)]
    bw = f"{bandwidth:.1f} GB/s" if bandwidth else "n/a (CPU)"
    print(f"\n{device}, {dtype}, H {sizes['hidden_size']}, I {sizes['intermediate_size']}, "
          f"{sizes['num_hidden_layers']} layers, {tokens} tokens; measured pinned H2D bandwidth: {bw}")
    print(f"{'config':24s} {'tok/s':>8s} {'hit rate':>9s} {'MB/token':>9s} {'GB/s moved':>11s} {'% of H2D':>9s}  slots")
    for r in rows:
        share = f"{100 * r['gbps_moved'] / bandwidth:8.1f}%" if bandwidth else "      n/a"
        print(f"{r['config']:24s} {r['tokens_per_s']:8.2f} {r['hit_rate']:9.2f} {r['mb_per_token']:9.1f} "
              f"{r['gbps_moved']:11.2f} {share}  {r['slots']}")
    base = rows[2]["tokens_per_s"]
    if base:
        print(f"split 0.5 / split 1.0 at the same 25% budget: {rows[1]['tokens_per_s'] / base:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"bandwidth_gbps": bandwidth, "rows": rows, "kernels": krows}, indent=1))


if __name__ == "__main__":
    main()
