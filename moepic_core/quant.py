"""Row codecs: a neuron row `[3, H]` (gate row, up row, down column) <-> the bytes the store keeps.

float : the row in the store dtype, 3*H values.
int8  : 3*H int8 values, then 3*(H/64) fp16 scales (symmetric, per group of 64 along H).
int4  : 3*H/2 bytes (two 4-bit values per byte, low nibble first, stored +8), then the same scales.
Every row has the same byte size, so a segment of rows `[a, b)` stays one contiguous byte range.
"""
from __future__ import annotations

import torch

from .spec import DTYPE_BYTES, QUANT_GROUP, row_bytes

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in TORCH_DTYPES.items()}[dtype]


def _scales(w: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """w [n, 3, H] float -> (grouped w [n, 3, H/64, 64] fp32, fp16 scales [n, 3, H/64])."""
    n, three, h = w.shape
    g = w.float().reshape(n, three, h // QUANT_GROUP, QUANT_GROUP)
    scale = (g.abs().amax(dim=-1) / qmax).to(torch.float16)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return g, scale


def encode_rows(w: torch.Tensor, quant: str, dtype: str) -> torch.Tensor:
    """w [n, 3, H] -> uint8 [n, row_bytes]."""
    n, _, h = w.shape
    if quant == "none":
        return w.to(TORCH_DTYPES[dtype]).contiguous().view(torch.uint8).reshape(n, -1)
    qmax = 127 if quant == "int8" else 7
    g, scale = _scales(w, qmax)
    q = torch.round(g / scale.float().unsqueeze(-1)).clamp_(-qmax - (quant == "int4"), qmax).to(torch.int8)
    q = q.reshape(n, 3 * h)
    if quant == "int8":
        data = q.view(torch.uint8)
    else:
        u = (q + 8).to(torch.uint8).reshape(n, 3 * h // 2, 2)
        data = u[..., 0] | (u[..., 1] << 4)
    out = torch.cat([data, scale.reshape(n, -1).view(torch.uint8)], dim=1)
    assert out.shape[1] == row_bytes(h, quant, dtype)
    return out


def decode_rows(rows: torch.Tensor, hidden: int, quant: str, dtype: str, out_dtype: torch.dtype) -> torch.Tensor:
    """uint8 [n, row_bytes] -> [n, 3, H] in `out_dtype` (a view, without copying, when it can be)."""
    n = rows.shape[0]
    if quant == "none":
        w = rows.view(TORCH_DTYPES[dtype]).view(n, 3, hidden)
        return w if w.dtype == out_dtype else w.to(out_dtype)
    groups = 3 * hidden // QUANT_GROUP
    data_bytes = rows.shape[1] - 2 * groups
    scale = rows[:, data_bytes:].contiguous().view(torch.float16).to(torch.float32).view(n, groups, 1)
    if quant == "int8":
        q = rows[:, :data_bytes].view(torch.int8)
    else:
        packed = rows[:, :data_bytes]
        q = torch.stack([(packed & 15), (packed >> 4)], dim=-1).view(n, 3 * hidden).to(torch.int8) - 8
    w = q.to(torch.float32).view(n, groups, QUANT_GROUP) * scale
    return w.view(n, 3, hidden).to(out_dtype)


def pack_expert(gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """Checkpoint layout (gate [I, H], up [I, H], down [H, I]) -> neuron-major [I, 3, H]."""
    return torch.stack([gate, up, down.t()], dim=1)


__all__ = ["encode_rows", "decode_rows", "pack_expert", "TORCH_DTYPES", "DTYPE_BYTES", "dtype_name"]
