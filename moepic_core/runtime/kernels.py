"""Expert and dense-linear compute over packed bytes: the native kernels on the CPU, torch elsewhere.

    # T tokens, H hidden, I expert intermediate, n neurons of a segment (whole chunks), N x K linear
    kernel = ExpertKernel("int4", "bfloat16", H, I, torch.device("cpu"), torch.bfloat16)
    y = kernel.segment(x, rows)          # x [T, H], rows uint8 [n, row_bytes] -> partial y [T, H]

Which path runs (chosen by measurement: benchmarks/kernels.py, benchmarks/peer_llamacpp.py):
  CPU with the native library   one fused call per segment over the bytes where they lie (the
                                memory-mapped store, a slot or a staging buffer); the only
                                temporaries are a [T, H] fp32 accumulator per thread.
  otherwise (CUDA, no compiler) torch ops that reproduce the kernels' numbers: float rows are used
                                as views; quantized rows are decoded at most CHUNK_BYTES of weights
                                at a time, so a whole expert never exists in float at once.
The segments of one expert add up to the expert's output (same math, any split on chunk bounds).
"""
from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..spec import chunk_neurons, row_bytes
from . import native
from .quant import TORCH_DTYPES, code_bytes, decode_expert, decode_matrix, encode_matrix, fake_quantize

CHUNK_BYTES = 32 << 20  # fp32 weights decoded per step on the torch path


def store_format(quant: str, dtype: str) -> str:
    return dtype if quant == "none" else quant


def _call(status: int) -> None:
    if status:
        raise MemoryError("out of host memory in a native kernel")


@dataclass(frozen=True)
class Activation:
    """A neuron's h = glu(gate, up): one the native kernels know by `name` ("silu", "gelu_tanh", or
    GPT-OSS's "clamped_swiglu" with `alpha` and `limit`), or `fn(gate) * up` for any other `fn`
    (then only the torch path computes it)."""

    name: str = "silu"
    alpha: float = 0.0
    limit: float = 0.0
    fn: Callable | None = None

    @property
    def native(self) -> bool:
        return self.fn is None and self.name in native.ACTIVATIONS

    def glu(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        if self.fn is not None:
            return self.fn(gate) * up
        if self.name == "clamped_swiglu":
            gate, up = gate.clamp(max=self.limit), up.clamp(-self.limit, self.limit)
            return (up + 1) * gate * torch.sigmoid(self.alpha * gate)
        if self.name == "gelu_tanh":
            return torch.nn.functional.gelu(gate, approximate="tanh") * up
        return torch.nn.functional.silu(gate) * up


SILU = Activation()


def segment_forward(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor,
                    act: Activation | Callable = SILU, quantized: bool = False,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [T, H], gate/up [n, H], down [H, n] -> partial output [T, H]. `act`: an Activation, or a
    function f for f(gate) * up. `quantized`: multiply with activations quantized as the kernels do
    (x per block of H, hidden activations per chunk). `bias` [n, 2]: the neurons' gate/up biases."""
    act = act if isinstance(act, Activation) else Activation("", fn=act)
    xin = fake_quantize(x).to(x.dtype) if quantized else x
    gate_out, up_out = xin @ gate.t(), xin @ up.t()
    if bias is not None:
        gate_out, up_out = gate_out + bias[:, 0].to(gate_out.dtype), up_out + bias[:, 1].to(up_out.dtype)
    h = act.glu(gate_out, up_out)
    if quantized:
        h = fake_quantize(h).to(h.dtype)
    return h @ down.t()


def torch_workspace_bytes(hidden: int, quant: str, tokens: int = 1) -> int:
    """Peak temporaries of one segment on the torch path (part of the VRAM workspace on CUDA)."""
    activations = 8 * tokens * hidden * 4
    return activations if quant == "none" else activations + 3 * CHUNK_BYTES


class ExpertKernel:
    """Computes segments of experts stored in one format, on one device."""

    def __init__(self, quant: str, dtype: str, hidden: int, intermediate: int, device: torch.device,
                 compute_dtype: torch.dtype, activation: Activation = SILU, use_native: bool | None = None):
        self.quant, self.dtype, self.H, self.I = quant, dtype, hidden, intermediate
        self.S = chunk_neurons(intermediate)
        self.device, self.compute_dtype = device, compute_dtype
        self.activation = activation
        self.row_bytes = row_bytes(hidden, quant, dtype)
        wanted = device.type == "cpu" and use_native is not False and activation.native
        self.lib = native.library() if wanted else None
        self.fmt = native.FORMATS[store_format(quant, dtype)]

    @property
    def native(self) -> bool:
        return self.lib is not None

    def segment(self, x: torch.Tensor, rows: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [T, H] (compute dtype), rows uint8 [n, row_bytes] (whole chunks), bias fp32 [n, 2] (the
        neurons' gate/up biases, or None) -> the segment's output [T, H] (fp32 on the native path,
        the compute dtype on the torch path)."""
        if self.lib is not None:
            return self._native(x, rows, bias)
        step = max(self.S, CHUNK_BYTES // (3 * self.H * 4) // self.S * self.S)
        out = None
        for start in range(0, rows.shape[0], step):
            gate, up, down = decode_expert(rows[start:start + step], self.H, self.quant, self.dtype,
                                           self.compute_dtype, self.I)
            part = segment_forward(x, gate, up, down, self.activation, quantized=self.quant != "none",
                                   bias=None if bias is None else bias[start:start + step])
            out = part if out is None else out.add_(part)
        return out

    def _native(self, x: torch.Tensor, rows: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        xf = x.detach().to(torch.float32).contiguous()
        y = torch.zeros(xf.shape, dtype=torch.float32)
        if rows.shape[0]:
            if not rows.is_contiguous() or rows.shape[1] != self.row_bytes or rows.shape[0] % self.S:
                raise ValueError(f"segment rows {tuple(rows.shape)} are not whole chunks of {self.S} neurons")
            if bias is not None:
                bias = bias.to(torch.float32).contiguous()
            act = self.activation
            _call(self.lib.moepic_expert_segment(
                self.fmt, rows.data_ptr(), rows.shape[0] // self.S, self.S, self.H, xf.data_ptr(), xf.shape[0],
                y.data_ptr(), None if bias is None else bias.data_ptr(), native.ACTIVATIONS[act.name],
                ctypes.c_float(act.alpha), ctypes.c_float(act.limit), torch.get_num_threads()))
        return y


class PackedLinear(nn.Module):
    """A dense `nn.Linear` whose weight is packed for the native kernels (CPU only).

    Decode steps (up to MAX_NATIVE_TOKENS tokens) run the native matrix-vector kernel; longer inputs
    (prefill) decode the weight CHUNK_BYTES at a time and use torch's matmul, which wins there."""

    MAX_NATIVE_TOKENS = 4

    def __init__(self, linear: nn.Linear, quant: str, dtype: str):
        super().__init__()
        weight = linear.weight.detach()
        self.out_features, self.in_features = weight.shape
        self.quant, self.dtype = quant, dtype
        self.fmt = native.FORMATS[store_format(quant, dtype)]
        self.register_buffer("packed", encode_matrix(weight, quant, dtype).contiguous(), persistent=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.lib = native.library()

    @property
    def nbytes(self) -> int:
        return self.packed.numel()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, format={self.quant}/{self.dtype}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if self.lib is not None and flat.shape[0] <= self.MAX_NATIVE_TOKENS:
            xf = flat.detach().to(torch.float32).contiguous()
            y = torch.empty(xf.shape[0], self.out_features, dtype=torch.float32)
            _call(self.lib.moepic_linear(self.fmt, self.packed.data_ptr(), self.out_features, self.in_features,
                                         xf.data_ptr(), xf.shape[0], y.data_ptr(), torch.get_num_threads()))
            y = y.to(x.dtype)
        else:
            y = self._torch(flat)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def _torch(self, x: torch.Tensor) -> torch.Tensor:
        n, k = self.out_features, self.in_features
        if self.quant == "none":
            return x @ decode_matrix(self.packed, n, k, "none", self.dtype, x.dtype).t()
        xin = fake_quantize(x).to(x.dtype)
        codes = self.packed[:n * code_bytes(self.quant, self.dtype, k)].view(n, -1)
        scales = self.packed[codes.numel():].view(n, -1)
        step = max(1, CHUNK_BYTES // (4 * k))
        outs = []
        for a in range(0, n, step):
            part = torch.cat([codes[a:a + step].reshape(-1), scales[a:a + step].reshape(-1)])
            outs.append(xin @ decode_matrix(part, part.numel() // (codes.shape[1] + scales.shape[1]), k, self.quant,
                                            self.dtype, x.dtype).t())
        return torch.cat(outs, dim=-1)


def pack_dense_linears(model: nn.Module, quant: str, dtype: str, skip=()) -> int:
    """Replace the model's dense nn.Linear modules by PackedLinear (CPU); returns the bytes they use.

    `skip` holds modules left alone (the routers, so routing stays exact). With int4 the output
    head is packed int8: a 4-bit head costs the most quality (llama.cpp keeps it wider too)."""
    skipped = {id(m) for m in skip}
    head = model.get_output_embeddings()
    total = 0
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if not isinstance(child, nn.Linear) or id(child) in skipped:
                continue
            q = "int8" if (child is head and quant == "int4") else quant
            if q != "none" and (child.in_features % 32 or child.out_features % 8):
                continue  # the quantized layout needs blocks of 32 inputs and groups of 8 outputs
            packed = PackedLinear(child, q, dtype)
            setattr(module, child_name, packed)
            total += packed.nbytes
    return total


__all__ = ["Activation", "ExpertKernel", "PackedLinear", "pack_dense_linears", "segment_forward", "torch_workspace_bytes",
           "TORCH_DTYPES"]
