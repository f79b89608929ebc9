"""ExpertStore: every routed expert of a model, packed in the kernels' format in host memory.

Data: uint8 `[L_moe, E, I, row_bytes]` — expert (l, e) is stored in chunks of 32 neurons
(quant.py), so rows `[a, b)` on chunk bounds are one contiguous byte range that the kernels read
in place. Built once from the checkpoint's per-expert tensors, read one tensor at a time with
plain file reads (never the fused tensor, never the whole model twice), written to an on-disk
cache with an atomic rename, and memory-mapped on later loads. With CUDA it is read into one plain
host buffer that is then page-locked in place (cudaHostRegister), so copies to the GPU are async
and nothing is rounded up to a power of two the way torch's pinned-memory allocator does.

Cache file: MAGIC (8 bytes) | header length (u64) | JSON header | zero pad | data at DATA_OFFSET
| biases (fp32 `[L_moe, E, 2I + H]`: per neuron its gate and up bias, then the expert's down bias;
only for families with biased experts, GPT-OSS). The header holds the format version, a
fingerprint of the source checkpoint and options, and a CRC32 per layer (and of the biases). A cache whose magic, version, fingerprint, size or CRCs disagree is rebuilt.
Stores over FULL_VERIFY_BYTES check the CRC of each layer's first and last MiB instead of all.
"""
from __future__ import annotations

import hashlib
import json
import logging
import struct
import weakref
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelLoadError
from ..fsutil import atomic_path, default_cache_dir
from ..spec import ModelSpec
from .quant import encode_expert
from .weights import CheckpointReader

log = logging.getLogger(__name__)

STORE_VERSION = 2  # 2: chunked kernel layout, Q8_0/Q4_0 blocks of 32
MAGIC = b"MOEPICX\x01"
DATA_OFFSET = 1 << 16
FULL_VERIFY_BYTES = 2 << 30
SAMPLE = 1 << 20


class ExpertStore:
    def __init__(self, data: torch.Tensor, spec: ModelSpec, quant: str, dtype: str, path: Path | None,
                 biases: torch.Tensor | None = None):
        self.data = data  # uint8 [L_moe, E, I, row_bytes]
        self.biases = biases  # fp32 [L_moe, E, 2I + H] or None
        self.spec, self.quant, self.dtype, self.path = spec, quant, dtype, path
        self.row_bytes = data.shape[-1]

    def neuron_bias(self, pos: int, expert: int) -> torch.Tensor | None:
        """fp32 [I, 2]: each neuron's gate and up bias (rows travel with the neuron), or None."""
        if self.biases is None:
            return None
        return self.biases[pos, expert, :2 * self.spec.intermediate_size].view(-1, 2)

    def down_bias(self, pos: int, expert: int) -> torch.Tensor | None:
        """fp32 [H]: added once to the expert's output (never per segment), or None."""
        return None if self.biases is None else self.biases[pos, expert, 2 * self.spec.intermediate_size:]

    @property
    def nbytes(self) -> int:
        return self.data.numel()

    @property
    def pinned(self) -> bool:
        return self.data.is_pinned()

    def rows(self, pos: int, expert: int, start: int, stop: int) -> torch.Tensor:
        """uint8 [stop - start, row_bytes]: rows of expert `expert` in MoE layer number `pos`."""
        return self.data[pos, expert, start:stop]

    # --- building and opening -----------------------------------------------------------------
    @classmethod
    def open(cls, reader: CheckpointReader, adapter, spec: ModelSpec, *, quant: str, dtype: str,
             cache_dir: Path | None = None, pin: bool = False, progress=None) -> "ExpertStore":
        """Load the cached store for these options, building (or rebuilding) it when needed."""
        shape = (spec.num_moe_layers, spec.num_experts, spec.intermediate_size, spec.row_bytes(quant, dtype))
        bias_shape = ((spec.num_moe_layers, spec.num_experts, 2 * spec.intermediate_size + spec.hidden_size)
                      if getattr(adapter, "expert_biases", False) else None)
        fp = hashlib.sha256(json.dumps([STORE_VERSION, quant, dtype, reader.fingerprint(), list(spec.moe_layers),
                                        shape, bias_shape]).encode()).hexdigest()
        path = Path(cache_dir or default_cache_dir()) / spec.store_file(quant, dtype, fp[:16])
        problem = check_cache(path, fp, shape, bias_shape) if path.exists() else "missing"
        if problem:
            if problem != "missing":
                log.warning("expert cache %s is unusable (%s); rebuilding it", path, problem)
            build_cache(path, reader, adapter, spec, quant=quant, dtype=dtype, fingerprint=fp, shape=shape,
                        bias_shape=bias_shape, progress=progress)
        data = map_cache(path, shape, pin=pin)
        return cls(data, spec, quant, dtype, path, read_biases(path, shape, bias_shape))


def _header_bytes(header: dict) -> bytes:
    blob = json.dumps(header).encode()
    out = MAGIC + struct.pack("<Q", len(blob)) + blob
    if len(out) > DATA_OFFSET:
        raise ValueError("store header too large")
    return out + b"\0" * (DATA_OFFSET - len(out))


def read_header(path: Path) -> dict:
    with open(path, "rb") as f:
        if f.read(8) != MAGIC:
            raise ValueError("bad magic")
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def _sample_crc(f, start: int, length: int) -> int:
    crc = 0
    for off in sorted({start, max(start, start + length - SAMPLE)}):
        f.seek(DATA_OFFSET + off)
        crc = zlib.crc32(f.read(min(SAMPLE, length)), crc)
    return crc


def read_biases(path: Path, shape: tuple, bias_shape: tuple | None) -> torch.Tensor | None:
    if bias_shape is None:
        return None
    with open(path, "rb") as f:
        f.seek(DATA_OFFSET + int(np.prod(shape)))
        blob = bytearray(4 * int(np.prod(bias_shape)))
        f.readinto(blob)
    return torch.frombuffer(blob, dtype=torch.float32).view(bias_shape)


def check_cache(path: Path, fingerprint: str, shape: tuple, bias_shape: tuple | None = None) -> str | None:
    """None if the cache at `path` is usable, else what is wrong with it."""
    try:
        header = read_header(path)
    except (OSError, ValueError, struct.error) as e:
        return f"unreadable header: {e}"
    if header.get("version") != STORE_VERSION:
        return f"format version {header.get('version')} != {STORE_VERSION}"
    if header.get("fingerprint") != fingerprint or tuple(header.get("shape", ())) != shape:
        return "stale: made from other weights or options"
    layer_bytes = int(np.prod(shape[1:]))
    bias_bytes = 4 * int(np.prod(bias_shape)) if bias_shape else 0
    if path.stat().st_size != DATA_OFFSET + shape[0] * layer_bytes + bias_bytes:
        return "wrong size (truncated?)"
    if bias_shape:
        with open(path, "rb") as f:
            f.seek(DATA_OFFSET + shape[0] * layer_bytes)
            if zlib.crc32(f.read(bias_bytes)) != header.get("bias_crc"):
                return "checksum mismatch in the biases"
    full = shape[0] * layer_bytes <= FULL_VERIFY_BYTES
    with open(path, "rb") as f:
        for i in range(shape[0]):
            if full:
                f.seek(DATA_OFFSET + i * layer_bytes)
                crc, want = zlib.crc32(f.read(layer_bytes)), header["layer_crc"][i]
            else:
                crc, want = _sample_crc(f, i * layer_bytes, layer_bytes), header["sample_crc"][i]
            if crc != want:
                return f"checksum mismatch in layer {i}"
    return None


def build_cache(path: Path, reader: CheckpointReader, adapter, spec: ModelSpec, *, quant: str, dtype: str,
                fingerprint: str, shape: tuple, bias_shape: tuple | None = None, progress=None) -> None:
    """Pack every expert, one at a time, straight into the cache file (temporary file, then rename)."""
    layer_bytes = int(np.prod(shape[1:]))
    total = spec.num_moe_layers * spec.num_experts
    layer_crc, sample_crc = [], []
    biases = torch.zeros(bias_shape, dtype=torch.float32) if bias_shape else None
    with atomic_path(path) as tmp, open(tmp, "wb+") as f:
        f.write(b"\0" * DATA_OFFSET)
        for pos, layer in enumerate(spec.moe_layers):
            crc = 0
            for e in range(spec.num_experts):
                weights = adapter.expert_weights(reader, layer, e)
                gate, up, down = weights.gate, weights.up, weights.down
                if gate.shape != (spec.intermediate_size, spec.hidden_size) or down.shape != (
                        spec.hidden_size, spec.intermediate_size):
                    raise ModelLoadError(f"expert {e} of layer {layer} has shapes {tuple(gate.shape)}, "
                                         f"{tuple(down.shape)}; the config says I={spec.intermediate_size}")
                blob = encode_expert(gate, up, down, quant, dtype).numpy().tobytes()
                f.write(blob)
                if biases is not None:
                    biases[pos, e] = torch.cat([torch.stack([weights.gate_bias, weights.up_bias], dim=1).reshape(-1),
                                                weights.down_bias]).float()
                crc = zlib.crc32(blob, crc)
                if progress:
                    progress("packing experts", (pos * spec.num_experts + e + 1) / total)
            layer_crc.append(crc)
            sample_crc.append(_sample_crc(f, pos * layer_bytes, layer_bytes))
            f.seek(DATA_OFFSET + (pos + 1) * layer_bytes)
        header = {"version": STORE_VERSION, "fingerprint": fingerprint, "shape": list(shape), "quant": quant,
                  "dtype": dtype, "model": spec.name, "layer_crc": layer_crc, "sample_crc": sample_crc}
        if biases is not None:
            blob = biases.numpy().tobytes()
            f.seek(DATA_OFFSET + shape[0] * layer_bytes)
            f.write(blob)
            header.update(bias_shape=list(bias_shape), bias_crc=zlib.crc32(blob))
        f.seek(0)
        f.write(_header_bytes(header))
        f.flush()


def map_cache(path: Path, shape: tuple, pin: bool) -> torch.Tensor:
    """The cache's data as a uint8 tensor: memory-mapped, or read into page-locked memory when `pin`."""
    nbytes = int(np.prod(shape))
    if pin:
        data = torch.empty(nbytes, dtype=torch.uint8)
        view = data.numpy()
        with open(path, "rb") as f:
            f.seek(DATA_OFFSET)
            for off in range(0, nbytes, 64 << 20):
                f.readinto(memoryview(view[off:off + (64 << 20)]))
        page_lock(data)
        return data.view(shape)
    mm = np.memmap(path, dtype=np.uint8, mode="c", offset=DATA_OFFSET, shape=(nbytes,))
    return torch.from_numpy(mm).view(shape)


def page_lock(data: torch.Tensor) -> bool:
    """Register `data`'s memory with CUDA as page-locked (no copy, no rounding); unregistered when
    the tensor is freed. False (and a warning) when CUDA refuses: copies then stay synchronous."""
    cudart = torch.cuda.cudart()
    err = cudart.cudaHostRegister(data.data_ptr(), data.numel() * data.element_size(), 0)
    if int(getattr(err, "value", err)) != 0:
        log.warning("could not page-lock the %.1f GB expert store (%s); GPU copies will be synchronous",
                    data.numel() / 1e9, err)
        return False
    weakref.finalize(data, cudart.cudaHostUnregister, data.data_ptr())
    return True
