"""One expert, one token: MoEpic's native kernels against the weight-only kernels torch ships, side by side.

    python benchmarks/kernels.py [--hidden 4096] [--inter 14336] [--threads 2] [--rounds 5]

Each row times `y = W_down (act(W_gate x) * W_up x)` for one Mixtral-shaped expert at batch 1 (the
decode case) on the CPU, best of `--rounds` runs of each, and prints ms, GB/s of weight bytes
read and the ratio torch / MoEpic (> 1: MoEpic is faster):

  bf16  MoEpic bf16 rows            vs  torch F.linear on bf16 weights (and fp32, what the engine
                                        ran before the kernels)
  int8  MoEpic Q8_0 (8.5 bits)      vs  torch `_weight_int8pack_mm` (int8, one scale per row)
  int4  MoEpic Q4_0 (4.5 bits)      vs  torch `_weight_int4pack_mm_for_cpu` (group 64, bf16 scale
                                        and zero: 4.5 bits)

The torch weights are random codes of the right shapes (speed does not depend on the values). The
engine's choice (native kernels where a C compiler is present, torch ops elsewhere) comes from this
table and from benchmarks/peer_llamacpp.py.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from moepic_core.runtime import native  # noqa: E402
from moepic_core.runtime.kernels import ExpertKernel  # noqa: E402
from moepic_core.runtime.quant import encode_expert  # noqa: E402

INT4_GROUP = 64


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--inter", type=int, default=14336)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    return p.parse_args(argv)


def best_ms(fn, rounds: int) -> float:
    fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def moepic_expert(quant: str, h: int, i: int):
    """The engine's kernel over one encoded expert; returns (call, weight bytes)."""
    g = torch.Generator().manual_seed(0)
    gate, up = (torch.randn(i, h, generator=g) * 0.02 for _ in range(2))
    rows = encode_expert(gate, up, torch.randn(h, i, generator=g) * 0.02, quant, "bfloat16")
    kernel = ExpertKernel(quant, "bfloat16", h, i, torch.device("cpu"), torch.bfloat16)
    x = torch.randn(1, h, dtype=torch.bfloat16, generator=g)
    return (lambda: kernel.segment(x, rows)), rows.numel()


def torch_float_expert(dtype: torch.dtype, h: int, i: int):
    gate_up = torch.randn(2 * i, h, dtype=dtype) * 0.02
    down = torch.randn(h, i, dtype=dtype) * 0.02
    x = torch.randn(1, h, dtype=dtype)

    def call():
        a, b = F.linear(x, gate_up).chunk(2, dim=-1)
        return F.linear(F.silu(a) * b, down)

    return call, (gate_up.numel() + down.numel()) * gate_up.element_size()


def torch_int8_expert(h: int, i: int):
    gate_up = torch.randint(-127, 128, (2 * i, h), dtype=torch.int8)
    down = torch.randint(-127, 128, (h, i), dtype=torch.int8)
    s1, s2 = torch.rand(2 * i, dtype=torch.bfloat16), torch.rand(h, dtype=torch.bfloat16)
    x = torch.randn(1, h, dtype=torch.bfloat16)

    def call():
        a, b = torch.ops.aten._weight_int8pack_mm(x, gate_up, s1).chunk(2, dim=-1)
        return torch.ops.aten._weight_int8pack_mm(F.silu(a) * b, down, s2)

    return call, gate_up.numel() + down.numel() + 2 * (s1.numel() + s2.numel())


def torch_int4_expert(h: int, i: int):
    def pack(n: int, k: int):
        codes = torch.randint(0, 16, (n, k), dtype=torch.int32)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
        return packed, torch.rand(k // INT4_GROUP, n, 2, dtype=torch.bfloat16)

    (p1, sz1), (p2, sz2) = pack(2 * i, h), pack(h, i)
    x = torch.randn(1, h, dtype=torch.bfloat16)

    def call():
        a, b = torch.ops.aten._weight_int4pack_mm_for_cpu(x, p1, INT4_GROUP, sz1).chunk(2, dim=-1)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(F.silu(a) * b, p2, INT4_GROUP, sz2)

    return call, p1.numel() * p1.element_size() + p2.numel() * p2.element_size() + 2 * (sz1.numel() + sz2.numel())


def rows_to_time(h: int, i: int):
    yield "bf16", ("MoEpic bf16", *moepic_expert("none", h, i)), ("torch bf16 linear", *torch_float_expert(torch.bfloat16, h, i))
    yield "bf16", None, ("torch fp32 linear", *torch_float_expert(torch.float32, h, i))
    yield "int8", ("MoEpic Q8_0", *moepic_expert("int8", h, i)), ("torch int8pack_mm", *torch_int8_expert(h, i))
    yield "int4", ("MoEpic Q4_0", *moepic_expert("int4", h, i)), ("torch int4pack_mm g64", *torch_int4_expert(h, i))


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"expert {args.hidden}x{args.inter}, batch 1, {args.threads} threads, native: {native.describe()}")
    print(f"{'format':6} {'MoEpic':22} {'ms':>7} {'GB/s':>6} | {'torch':22} {'ms':>7} {'GB/s':>6} | torch/MoEpic")
    ours_ms = None
    for fmt, ours, theirs in rows_to_time(args.hidden, args.inter):
        if ours is not None:
            ours_ms = best_ms(ours[1], args.rounds)
            left = f"{ours[0]:22} {ours_ms:7.2f} {ours[2] / ours_ms / 1e6:6.1f}"
        else:
            left = f"{'':22} {'':7} {'':6}"
        theirs_ms = best_ms(theirs[1], args.rounds)
        print(f"{fmt:6} {left} | {theirs[0]:22} {theirs_ms:7.2f} {theirs[2] / theirs_ms / 1e6:6.1f} | {theirs_ms / ours_ms:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
