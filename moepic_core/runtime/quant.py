"""Codecs: weights <-> the bytes the store and the kernels read (csrc/kernels.c has the same text).

Formats: the float dtypes hold values; int8 is llama.cpp's Q8_0 in content (int8 codes, one fp16
scale per block of 32 values, scale = absmax / 127) and int4 its Q4_0 (codes + 8 in 4 bits, block
of 32 in 16 bytes with value j < 16 in the low nibble of byte j and value 16 + j in its high
nibble, scale = m / -8 for m the block's value of largest magnitude): 8.5 and 4.5 bits a weight.

A *matrix* [N, K] of float values is stored row after row. A quantized matrix is stored in groups
of 8 rows (N % 8 == 0) so that one vector lane of the kernels holds one row: for each group and
block of 32 columns, the 8 rows' fp16 scales (16 bytes), then their codes interleaved 4 columns at
a time (int8: 8 slices of 32 bytes, slice g = rows 0..7 x columns 4g..4g+3; int4: 4 slices of 32
bytes, slice p = rows 0..7 x columns 8p+j in the low nibble and 8p+4+j in the high, j < 4): 144
(int4) or 272 (int8) bytes = 8 x llama.cpp's 18 or 34 per block. An *expert* is stored in
chunks of S neurons (S = 32, or the whole expert when I % 32 != 0), each chunk one contiguous byte
range: gate rows [S, H], up rows [S, H], down rows [H, S] (its down columns, output-major), each a
matrix. A chunk takes S * row_bytes bytes (spec.row_bytes), so the store keeps experts as
`[I, row_bytes]` and any run of whole chunks `[a, b)` is one byte range: a segment.

Quantized formats multiply with activations quantized the same way (`quantize_activation`); the
torch path here reproduces the kernels' numbers (`decode_expert` + `fake_quantize`).
"""
from __future__ import annotations

import torch

from ..spec import CHUNK, DTYPE_BYTES, QUANT_GROUP, chunk_neurons, row_bytes

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in TORCH_DTYPES.items()}[dtype]


def code_bytes(quant: str, dtype: str, n: int) -> int:
    """Bytes of the codes (or values) of one row of `n` values."""
    if quant == "none":
        return n * DTYPE_BYTES[dtype]
    return n if quant == "int8" else n // 2


def scale_bytes(quant: str, n: int) -> int:
    return 0 if quant == "none" else (n // QUANT_GROUP) * 2


# --- matrices -----------------------------------------------------------------------------------
def _quantize_blocks(w: torch.Tensor, quant: str) -> tuple[torch.Tensor, torch.Tensor]:
    """w [..., K] -> (codes uint8 [..., code bytes], fp16 scales [..., K/32])."""
    g = w.float().reshape(*w.shape[:-1], w.shape[-1] // QUANT_GROUP, QUANT_GROUP)
    if quant == "int8":
        scale = (g.abs().amax(-1) / 127).to(torch.float16)
    else:
        scale = (g.gather(-1, g.abs().argmax(-1, keepdim=True)).squeeze(-1) / -8).to(torch.float16)
    inv = torch.where(scale == 0, 0.0, 1.0 / scale.float()).unsqueeze(-1)
    if quant == "int8":
        codes = torch.round(g * inv).clamp_(-127, 127).to(torch.int8).view(torch.uint8)
    else:
        q = (torch.round(g * inv) + 8).clamp_(0, 15).to(torch.uint8)
        codes = q[..., :16] | (q[..., 16:] << 4)
    return codes.reshape(*w.shape[:-1], -1), scale


ROW_GROUP = 8  # rows interleaved in a quantized matrix


def encode_matrix(w: torch.Tensor, quant: str, dtype: str) -> torch.Tensor:
    """w [..., N, K] -> uint8 [..., N * row bytes] in the kernels' layout (module docstring)."""
    lead, (n, k) = w.shape[:-2], w.shape[-2:]
    if quant == "none":
        return w.to(TORCH_DTYPES[dtype]).contiguous().view(torch.uint8).reshape(*lead, -1)
    if quant not in ("int8", "int4"):
        raise ValueError(f"unknown quantization {quant!r}")
    if n % ROW_GROUP:
        raise ValueError(f"a quantized matrix needs rows in multiples of {ROW_GROUP}, got {n}")
    codes, scale = _quantize_blocks(w, quant)  # [..., N, K/32, 32 or 16 bytes], [..., N, K/32]
    g, b = n // ROW_GROUP, k // QUANT_GROUP
    if quant == "int8":
        q = codes.reshape(*lead, g, ROW_GROUP, b, 8, 4)  # [.., G, r, B, slice, j]
        q = q.permute(*range(len(lead)), -5, -3, -2, -4, -1)  # [.., G, B, slice, r, j]
    else:
        c = _nibbles(codes.reshape(*lead, n, b, 16)).reshape(*lead, g, ROW_GROUP, b, 4, 2, 4)  # [.., G, r, B, slice, half, j]
        c = c.permute(*range(len(lead)), -6, -4, -3, -5, -1, -2)  # [.., G, B, slice, r, j, half]
        q = c[..., 0] | (c[..., 1] << 4)
    q = q.reshape(*lead, g, b, -1)
    sc = scale.reshape(*lead, g, ROW_GROUP, b).transpose(-1, -2).contiguous().view(torch.uint8)  # [.., G, B, 16]
    return torch.cat([sc, q], dim=-1).reshape(*lead, -1)


def _nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Q4 bytes [..., 16] (value j low, 16 + j high) -> codes 0..15 [..., 32] in column order."""
    return torch.cat([codes & 15, codes >> 4], dim=-1)


def decode_matrix(data: torch.Tensor, rows: int, cols: int, quant: str, dtype: str,
                  out_dtype: torch.dtype) -> torch.Tensor:
    """uint8 [..., N * row bytes] -> [..., N, K] in `out_dtype` (a view when it can be)."""
    lead = data.shape[:-1]
    if quant == "none":
        w = data.view(TORCH_DTYPES[dtype]).view(*lead, rows, cols)
        return w if w.dtype == out_dtype else w.to(out_dtype)
    g, b = rows // ROW_GROUP, cols // QUANT_GROUP
    blocks = data.reshape(*lead, g, b, -1)
    scale = blocks[..., :16].contiguous().view(torch.float16).float()  # [.., G, B, r]
    q = blocks[..., 16:]
    if quant == "int8":
        v = q.contiguous().view(torch.int8).reshape(*lead, g, b, 8, ROW_GROUP, 4)  # [.., G, B, slice, r, j]
        v = v.permute(*range(len(lead)), -5, -2, -4, -3, -1)  # [.., G, r, B, slice, j]
    else:
        v = q.reshape(*lead, g, b, 4, ROW_GROUP, 4)  # [.., G, B, slice, r, j]
        v = torch.stack([v & 15, v >> 4], dim=-1).to(torch.int8) - 8  # [.., G, B, slice, r, j, half]
        v = v.permute(*range(len(lead)), -6, -3, -5, -4, -1, -2)  # [.., G, r, B, slice, half, j]
    v = v.reshape(*lead, g, ROW_GROUP, b, QUANT_GROUP).float()
    w = v * scale.transpose(-1, -2).unsqueeze(-1)
    return w.reshape(*lead, rows, cols).to(out_dtype)


# --- experts ------------------------------------------------------------------------------------
def encode_expert(gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor, quant: str, dtype: str) -> torch.Tensor:
    """Checkpoint layout (gate [I, H], up [I, H], down [H, I]) -> uint8 [I, row_bytes] in chunks."""
    inter, hidden = gate.shape
    s = chunk_neurons(inter)
    n = inter // s
    down_rows = down.reshape(hidden, n, s).permute(1, 0, 2)  # [chunks, H, S]
    parts = [encode_matrix(gate.reshape(n, s, hidden), quant, dtype),
             encode_matrix(up.reshape(n, s, hidden), quant, dtype),
             encode_matrix(down_rows, quant, dtype)]
    out = torch.cat(parts, dim=-1).reshape(inter, -1)
    assert out.shape[1] == row_bytes(hidden, quant, dtype), (out.shape, row_bytes(hidden, quant, dtype))
    return out


def decode_expert(rows: torch.Tensor, hidden: int, quant: str, dtype: str, out_dtype: torch.dtype,
                  intermediate_size: int | None = None):
    """uint8 [n, row_bytes] (whole chunks) -> gate [n, H], up [n, H], down [H, n] in `out_dtype`."""
    n = rows.shape[0]
    s = chunk_neurons(intermediate_size or n)
    chunks = rows.reshape(n // s, -1)
    gu = s * (code_bytes(quant, dtype, hidden) + scale_bytes(quant, hidden))
    gate = decode_matrix(chunks[:, :gu], s, hidden, quant, dtype, out_dtype).reshape(n, hidden)
    up = decode_matrix(chunks[:, gu:2 * gu], s, hidden, quant, dtype, out_dtype).reshape(n, hidden)
    down = decode_matrix(chunks[:, 2 * gu:], hidden, s, quant, dtype, out_dtype)  # [chunks, H, S]
    return gate, up, down.permute(1, 0, 2).reshape(hidden, n)


def fake_quantize(x: torch.Tensor) -> torch.Tensor:
    """x [..., K] -> the values the kernels multiply with: int8 per block of 32 (absmax / 127),
    rounded half to even, dequantized again (fp32)."""
    g = x.float().reshape(*x.shape[:-1], x.shape[-1] // QUANT_GROUP, QUANT_GROUP)
    scale = g.abs().amax(-1, keepdim=True) / 127
    inv = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    return (torch.round(g * inv) * scale).reshape(x.shape)


__all__ = ["encode_matrix", "decode_matrix", "encode_expert", "decode_expert", "fake_quantize", "chunk_neurons",
           "TORCH_DTYPES", "DTYPE_BYTES", "dtype_name", "CHUNK"]
