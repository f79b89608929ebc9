"""The native CPU kernels (csrc/kernels.c): compiled once per machine with its C compiler, then loaded.

Why our own kernels: on the machines this project is built on (2-core AVX2, no AVX-512), torch's
bf16 matrix-vector product reads 7-12 GB/s and its int4 kernel needs per-segment scale tensors that
break the neuron-major split; a fused expert kernel over neuron-major rows reads 16-19 GB/s for
every format and computes any run of neurons with one call (see benchmarks/peer_llamacpp.py).

The library is built with `cc -O3 -march=native -fopenmp` into `<cache>/kernels/`, named by a hash
of the source, the compiler and the CPU, written atomically. Without a compiler (or with
MOEPIC_NATIVE=0) `library()` returns None and the engine computes with torch ops instead, which
gives the same results more slowly. ctypes releases the GIL during each call.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import threading
from pathlib import Path

from ..fsutil import atomic_path, default_cache_dir

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "kernels.c"
ABI_VERSION = 5
FORMATS = {"float32": 0, "bfloat16": 1, "float16": 2, "int8": 3, "int4": 4}
ACTIVATIONS = {"silu": 0, "gelu_tanh": 1, "clamped_swiglu": 2}

_lock = threading.Lock()
_state: dict = {}


def kernel_dir() -> Path:
    return Path(os.environ.get("MOEPIC_KERNEL_DIR") or default_cache_dir() / "kernels")


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _cpu_id() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
        flags = next((line for line in info.splitlines() if line.startswith(("flags", "Features"))), "")
        model = next((line for line in info.splitlines() if line.startswith("model name")), "")
        return model + flags
    except OSError:
        return platform.processor() + platform.machine()


def _openmp_runtime() -> list[str]:
    """Torch's own OpenMP runtime when it ships one: linking against it gives one thread pool for
    torch and the kernels, instead of two pools spinning against each other."""
    import torch

    lib = Path(torch.__file__).parent / "lib"
    gomp = sorted(lib.glob("libgomp*.so*"))
    return [str(gomp[0]), f"-Wl,-rpath,{lib}"] if gomp else ["-fopenmp"]


def _build(cc: str, out: Path) -> None:
    flags = ["-O3", "-march=native", "-fPIC", "-std=c11", "-fopenmp"]
    with atomic_path(out) as tmp:
        obj = tmp.with_suffix(".o")
        steps = ([cc, *flags, "-c", str(SOURCE), "-o", str(obj)],
                 [cc, "-shared", str(obj), "-o", str(tmp), *_openmp_runtime(), "-lm"])
        try:
            for cmd in steps:
                result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
                if result.returncode != 0:
                    raise RuntimeError(f"{' '.join(cmd)} failed: {result.stderr.strip()[:2000]}")
        finally:
            obj.unlink(missing_ok=True)


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    i64, i32, f32, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_void_p
    lib.moepic_abi_version.restype = i32
    lib.moepic_has_avx2.restype = i32
    lib.moepic_expert_segment.argtypes = [i32, ptr, i64, i64, i64, ptr, i64, ptr, ptr, i32, f32, f32, i32]
    lib.moepic_expert_segment.restype = i32
    lib.moepic_linear.argtypes = [i32, ptr, i64, i64, ptr, i64, ptr, i32]
    lib.moepic_chunk_bytes.argtypes = [i32, i64, i64]
    lib.moepic_chunk_bytes.restype = i64
    lib.moepic_linear.restype = i32
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernel library, building it on first use; None when it cannot be had here."""
    with _lock:
        if "lib" in _state:
            return _state["lib"]
        _state["lib"] = None
        if os.environ.get("MOEPIC_NATIVE", "1") == "0":
            _state["why"] = "disabled by MOEPIC_NATIVE=0"
            return None
        cc = _compiler()
        if cc is None:
            _state["why"] = "no C compiler found (cc, gcc or clang)"
            log.warning("native kernels unavailable: %s; using torch kernels (slower)", _state["why"])
            return None
        try:
            version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
            key = hashlib.sha256(SOURCE.read_bytes() + version.encode() + _cpu_id().encode()
                                 + str(_openmp_runtime()).encode()).hexdigest()[:16]
            path = kernel_dir() / f"libmoepic-{key}.so"
            if not path.exists():
                log.info("building native kernels with %s (once per machine)", cc)
                _build(cc, path)
            lib = _declare(ctypes.CDLL(str(path)))
            if lib.moepic_abi_version() != ABI_VERSION:
                raise RuntimeError(f"kernel ABI {lib.moepic_abi_version()} != {ABI_VERSION}")
            _state["lib"] = lib
            _state["why"] = f"native ({'AVX2' if lib.moepic_has_avx2() else 'portable C'})"
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            _state["why"] = f"build failed: {e}"
            log.warning("native kernels unavailable (%s); using torch kernels (slower)", e)
        return _state["lib"]


def describe() -> str:
    """One line on which CPU kernels run: "native (AVX2)", or why torch's are used."""
    library()
    return _state.get("why", "")
