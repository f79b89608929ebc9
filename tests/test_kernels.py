"""The kernels' formats and math: hand-checked byte positions, quantization error bounds, the native
kernels against the torch path (two implementations of the same numbers), splits adding up."""
from __future__ import annotations

import shutil

import pytest
import torch

from moepic_core.runtime import native
from moepic_core.runtime.kernels import Activation, ExpertKernel, PackedLinear, segment_forward
from moepic_core.layout import split_rows
from moepic_core.runtime.quant import decode_expert, decode_matrix, encode_expert, encode_matrix, fake_quantize
from moepic_core.spec import row_bytes

FORMATS = [("none", "float32"), ("none", "bfloat16"), ("none", "float16"), ("int8", "bfloat16"),
           ("int4", "bfloat16")]
CPU = torch.device("cpu")


def test_native_kernels_build_where_a_compiler_exists():
    if not any(shutil.which(c) for c in ("cc", "gcc", "clang")):
        pytest.skip("no C compiler on this machine: the engine runs the torch path (tested below)")
    assert native.library() is not None, native.describe()


def test_int8_codes_hand_placed():
    # rows 0..7 x one block of 32; row 3 holds -127..: absmax 127 -> scale 1.0, codes = values
    w = torch.zeros(8, 32)
    w[3] = torch.arange(32, dtype=torch.float32) * 4 - 64
    w[3, 0] = -127.0
    data = encode_matrix(w, "int8", "float32")
    assert data.numel() == 8 * row_bytes(32, "int8", "float32", parts=1) == 16 + 256
    assert data[:16].view(torch.float16)[3].item() == 1.0
    # column 13 of row 3: slice 13 // 4 = 3, byte 16 + 32 * 3 + 4 * 3 + 13 % 4
    assert data[16 + 32 * 3 + 4 * 3 + 1].view(torch.int8).item() == 13 * 4 - 64
    assert torch.equal(decode_matrix(data, 8, 32, "int8", "float32", torch.float32), w)


def test_int4_codes_hand_placed():
    # block extreme -8 -> scale 1.0, codes = value + 8; column 13: slice 1, j = 1, high nibble (13 % 8 >= 4)
    w = torch.zeros(8, 32)
    w[5, 0] = -8.0
    w[5, 13] = 3.0
    w[5, 9] = -2.0  # column 9: slice 1, j = 1, low nibble
    data = encode_matrix(w, "int4", "float32")
    assert data.numel() == 16 + 128
    assert data[:16].view(torch.float16)[5].item() == 1.0
    byte = data[16 + 32 * 1 + 4 * 5 + 1].item()
    assert (byte & 15, byte >> 4) == (-2 + 8, 3 + 8)
    assert torch.equal(decode_matrix(data, 8, 32, "int4", "float32", torch.float32), w)


@pytest.mark.parametrize("quant,step", [("int8", 1 / 127), ("int4", 1 / 8)])
def test_quantization_error_within_half_a_step(quant, step):
    torch.manual_seed(0)
    w = torch.randn(16, 128)
    back = decode_matrix(encode_matrix(w, quant, "float32"), 16, 128, quant, "float32", torch.float32)
    absmax = w.view(16, 4, 32).abs().amax(-1, keepdim=True)
    err = (back - w).view(16, 4, 32).abs()
    half = err <= absmax * step / 2 * 1.01 + 1e-6
    if quant == "int8":
        assert half.all()
    else:  # Q4_0 codes the extreme as -8, so the opposite side stops at +7: one step there
        assert (err <= absmax * step * 1.01).all() and half.float().mean() > 0.97
    assert err.max() > 0


def test_expert_chunks_are_contiguous_matrices():
    torch.manual_seed(0)
    gate, up, down = torch.randn(64, 32), torch.randn(64, 32), torch.randn(32, 64)
    rows = encode_expert(gate, up, down, "none", "float32")
    chunk = rows[32:64].reshape(-1).view(torch.float32)  # neurons 32..63, one byte range
    assert torch.equal(chunk[:32 * 32].view(32, 32), gate[32:])
    assert torch.equal(chunk[32 * 32:2 * 32 * 32].view(32, 32), up[32:])
    assert torch.equal(chunk[2 * 32 * 32:].view(32, 32), down[:, 32:])
    g, u, d = decode_expert(rows, 32, "none", "float32", torch.float32)
    assert torch.equal(g, gate) and torch.equal(u, up) and torch.equal(d, down)


def test_split_rows_fall_on_chunks():
    for inter in (64, 192, 768, 1408, 14336):
        for m in range(1, 17):
            assert split_rows(inter, m / 16) % 32 == 0
    assert split_rows(100, 0.5) == 100  # not a multiple of 32: whole experts only


def expert_case(seed=0, hidden=256, inter=128):
    torch.manual_seed(seed)
    return (torch.randn(inter, hidden) * 0.05, torch.randn(inter, hidden) * 0.05, torch.randn(hidden, inter) * 0.05)


@pytest.mark.parametrize("quant,dtype", FORMATS)
@pytest.mark.parametrize("tokens", [1, 3])
def test_native_expert_kernel_matches_torch_path(quant, dtype, tokens):
    if native.library() is None:
        pytest.skip(f"native kernels not built: {native.describe()}")
    gate, up, down = expert_case()
    rows = encode_expert(gate, up, down, quant, dtype)
    x = torch.randn(tokens, 256)
    fast = ExpertKernel(quant, dtype, 256, 128, CPU, torch.float32)
    slow = ExpertKernel(quant, dtype, 256, 128, CPU, torch.float32, use_native=False)
    assert fast.native and not slow.native
    want = slow.segment(x, rows)
    got = fast.segment(x, rows)
    assert torch.allclose(got, want, atol=2e-6, rtol=1e-5), (got - want).abs().max()
    # a split at any chunk adds up to the whole expert
    parts = fast.segment(x, rows[:32]) + fast.segment(x, rows[32:96]) + fast.segment(x, rows[96:])
    assert torch.allclose(parts, got, atol=1e-6, rtol=1e-6)
    # and the formats stay near the float expert (the codecs did not scramble anything)
    exact = segment_forward(x, gate, up, down, torch.nn.functional.silu)
    bound = {"none": 1e-2, "int8": 5e-2, "int4": 0.3}[quant]
    assert (got - exact).norm() / exact.norm() < bound


def test_torch_path_quantizes_activations_like_the_kernels():
    gate, up, down = expert_case(1)
    rows = encode_expert(gate, up, down, "int8", "float32")
    g, u, d = decode_expert(rows, 256, "int8", "float32", torch.float32)
    x = torch.randn(2, 256)
    xq = fake_quantize(x)
    # per block of 32: absmax maps to +-127 exactly, every value lies on the block's grid
    blocks, qblocks = x.view(2, 8, 32), xq.view(2, 8, 32)
    scale = blocks.abs().amax(-1, keepdim=True) / 127
    assert torch.allclose((qblocks / scale), torch.round(qblocks / scale), atol=1e-4)
    assert torch.allclose(qblocks.abs().amax(-1), blocks.abs().amax(-1))
    h = torch.nn.functional.silu(xq @ g.t()) * (xq @ u.t())
    want = fake_quantize(h) @ d.t()
    got = ExpertKernel("int8", "float32", 256, 128, CPU, torch.float32, use_native=False).segment(x, rows)
    assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("act", ["gelu_tanh", "clamped_swiglu"])
def test_native_activations(act):
    if native.library() is None:
        pytest.skip(f"native kernels not built: {native.describe()}")
    gate, up, down = expert_case(2)
    rows = encode_expert(gate, up, down, "none", "float32")
    x = torch.randn(1, 256) * 4
    activation = Activation(act, alpha=1.702, limit=7.0)
    bias = torch.randn(128, 2) * 0.1
    got = ExpertKernel("none", "float32", 256, 128, CPU, torch.float32, activation).segment(x, rows, bias)
    torch_path = ExpertKernel("none", "float32", 256, 128, CPU, torch.float32, activation, use_native=False)
    assert torch.allclose(got, torch_path.segment(x, rows, bias), atol=1e-5)
    g, u = x @ gate.t() + bias[:, 0], x @ up.t() + bias[:, 1]
    if act == "gelu_tanh":
        h = torch.nn.functional.gelu(g, approximate="tanh") * u
    else:  # GPT-OSS: alpha 1.702, limit 7
        g, u = g.clamp(max=7.0), u.clamp(-7.0, 7.0)
        h = g * torch.sigmoid(1.702 * g) * (u + 1)
    assert torch.allclose(got, h @ down.t(), atol=1e-5)


@pytest.mark.parametrize("quant", ["none", "int8", "int4"])
def test_packed_linear_paths_agree(quant):
    torch.manual_seed(3)
    linear = torch.nn.Linear(128, 48)
    packed = PackedLinear(linear, quant, "bfloat16")
    with torch.no_grad():
        for tokens in (1, 3, 9):  # native for decode steps, torch for longer inputs
            x = torch.randn(tokens, 128)
            want = packed._torch(x) + linear.bias
            assert torch.allclose(packed(x), want, atol=1e-5), tokens
        err = (packed(x) - linear(x)).norm() / linear(x).norm()
    assert err < {"none": 1e-2, "int8": 5e-2, "int4": 0.3}[quant]
