"""How fast this machine's CPU computes experts of a given shape and format, in GB/s of weight bytes.

Measured once per (machine, shape, format, threads) with the kernels the engine really uses, on a
synthetic expert of the loaded model's shape, and kept in `<cache>/cpu_speed.json` (atomic write).
The cost model takes this as `cpu_gbps` for the CPU path of hybrid execution; `solve` and
`simulate` take it from `--cpu-gbps` or from here.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from ..fsutil import atomic_write_text, default_cache_dir
from . import native
from .hardware import cpu_gbps_from_timing
from .kernels import ExpertKernel
from .quant import TORCH_DTYPES, encode_expert

log = logging.getLogger(__name__)
MIN_SECONDS = 0.05  # time each measurement runs at least
STREAM_BYTES = 96 << 20  # experts are read from RAM, not from the 32 MB caches: cycle through this much


def _cache_file() -> Path:
    return default_cache_dir() / "cpu_speed.json"


def _key(hidden: int, inter: int, quant: str, dtype: str, threads: int) -> str:
    return f"{native._cpu_id()[:200]}|{native.describe()}|{hidden}x{inter}|{quant}|{dtype}|{threads}"


def measure_cpu_gbps(hidden: int, inter: int, quant: str = "none", dtype: str = "bfloat16",
                     threads: int | None = None, use_cache: bool = True) -> float:
    """GB/s of expert bytes the CPU computes at batch 1: best of a few passes over copies of one
    expert adding up to STREAM_BYTES, so the bytes come from RAM as they do in decode."""
    threads = threads or torch.get_num_threads()
    key = _key(hidden, inter, quant, dtype, threads)
    path = _cache_file()
    known = {}
    if use_cache and path.exists():
        try:
            known = json.loads(path.read_text())
        except (OSError, ValueError):
            known = {}
        if key in known:
            return float(known[key])
    gbps = _measure(hidden, inter, quant, dtype, threads)
    known[key] = gbps
    try:
        atomic_write_text(path, json.dumps(known, indent=1))
    except OSError as e:
        log.warning("could not keep the CPU speed in %s: %s", path, e)
    return gbps


def _measure(hidden: int, inter: int, quant: str, dtype: str, threads: int) -> float:
    generator = torch.Generator().manual_seed(0)
    gate, up = (torch.randn(inter, hidden, generator=generator) * 0.02 for _ in range(2))
    one = encode_expert(gate, up, torch.randn(hidden, inter, generator=generator) * 0.02, quant, dtype)
    del gate, up
    copies = max(1, -(-STREAM_BYTES // one.numel()))
    rows = one.unsqueeze(0).expand(copies, *one.shape).contiguous()
    kernel = ExpertKernel(quant, dtype, hidden, inter, torch.device("cpu"), TORCH_DTYPES[dtype])
    x = torch.randn(1, hidden, dtype=TORCH_DTYPES[dtype], generator=generator)

    def one_pass() -> float:
        start = time.perf_counter()
        for expert in rows:
            kernel.segment(x, expert)
        return time.perf_counter() - start

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        one_pass()  # warm: pages, threads
        best, spent = float("inf"), 0.0
        while spent < MIN_SECONDS or spent < 3 * best:
            elapsed = one_pass()
            best, spent = min(best, elapsed), spent + elapsed
    finally:
        torch.set_num_threads(previous)
    return cpu_gbps_from_timing(rows.numel(), best)
