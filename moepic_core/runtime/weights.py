"""A model folder's safetensors weights, read one tensor (or one row of a tensor) at a time with plain
file reads: no mmap, never the whole checkpoint in memory. The model finder (models/) reads the headers,
the dense loader and the expert store read the tensors through `CheckpointReader`.

safetensors file: header length n (u64, little endian) | JSON header of n bytes | data; the header maps
each tensor name to its dtype, shape and [start, stop) byte offsets into the data.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from ..errors import ModelLoadError

# safetensors dtype -> torch; U8 holds packed codes (GPT-OSS's MXFP4 blocks and scales)
READ_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
               "U8": torch.uint8}
MAX_HEADER_BYTES = 100_000_000


def weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        has_bin = any(folder.glob("*.bin")) or any(folder.glob("*.pt"))
        hint = " (only PyTorch .bin weights found: convert them to safetensors)" if has_bin else ""
        raise ModelLoadError(f"no *.safetensors weights in {folder}{hint}")
    return files


def read_safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file (tensor name -> dtype, shape, offsets); validates the size."""
    return _read_header(path)[1]


def _read_header(path: Path) -> tuple[int, dict]:
    """(offset of the data section, header)."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n <= 0 or n > MAX_HEADER_BYTES:
                raise ValueError(f"header length {n}")
            header = json.loads(f.read(n))
        size = path.stat().st_size
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end > size:
            raise ValueError(f"file is truncated ({size} bytes, needs {8 + n + end})")
        return 8 + n, header
    except (OSError, ValueError, struct.error, KeyError, TypeError) as e:
        raise ModelLoadError(f"corrupt safetensors file {path}: {e}") from e


class CheckpointReader:
    """Reads single tensors, or single rows of them, from a folder of safetensors files by offset."""

    def __init__(self, folder: Path):
        self.files = weight_files(folder)
        self.entries = {}  # tensor name -> (file, offset of its data section, header entry)
        for path in self.files:
            base, header = _read_header(path)
            for key, info in header.items():
                if key != "__metadata__":
                    self.entries[key] = (path, base, info)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def keys(self):
        return self.entries.keys()

    def shapes(self) -> dict[str, list[int]]:
        return {key: info["shape"] for key, (_, _, info) in self.entries.items()}

    def get(self, key: str) -> torch.Tensor:
        """The whole tensor `key`."""
        path, base, info = self._entry(key)
        start, stop = info["data_offsets"]
        return self._read(key, path, base + start, stop - start, info["shape"])

    def row(self, key: str, index: int) -> torch.Tensor:
        """`tensor[index]` of tensor `key`, read alone (one expert of a fused [E, ...] tensor)."""
        path, base, info = self._entry(key)
        shape = info["shape"]
        if not shape or not 0 <= index < shape[0]:
            raise ModelLoadError(f"tensor {key} ({info['dtype']} {shape}) has no row {index}")
        start, stop = info["data_offsets"]
        row_bytes = (stop - start) // shape[0]
        return self._read(key, path, base + start + index * row_bytes, row_bytes, shape[1:])

    def fingerprint(self) -> list:
        return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in self.files]

    def _entry(self, key: str) -> tuple:
        try:
            entry = self.entries[key]
        except KeyError:
            raise ModelLoadError(f"checkpoint has no tensor {key!r}") from None
        if entry[2]["dtype"] not in READ_DTYPES:
            raise ModelLoadError(f"tensor {key} has dtype {entry[2]['dtype']}, which MoEpic cannot read")
        return entry

    def _read(self, key: str, path: Path, offset: int, nbytes: int, shape) -> torch.Tensor:
        buf = bytearray(nbytes)
        with open(path, "rb") as f:
            f.seek(offset)
            if f.readinto(buf) != nbytes:
                raise ModelLoadError(f"corrupt safetensors file {path}: tensor {key} is truncated")
        return torch.frombuffer(buf, dtype=READ_DTYPES[self.entries[key][2]["dtype"]]).view(shape)
