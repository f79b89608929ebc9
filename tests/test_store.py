"""The packed expert store: layout, quantization, on-disk cache reuse, corruption and staleness."""
from __future__ import annotations

import os

import pytest
import torch

from moepic_core import Engine
from moepic_core.quant import decode_rows, encode_rows, pack_expert
from moepic_core.testing import load_reference


def test_store_rows_are_neuron_major(tiny_models, cache_dir):
    folder = tiny_models["mixtral"]
    engine = Engine.load(folder, device="cpu", cache_gb=0, cache_dir=cache_dir)
    ref = load_reference(folder)
    experts = ref.model.layers[1].mlp.experts
    I = engine.spec.intermediate_size
    block = engine.runtime.store.rows(1, 5, 0, I).view(torch.float32).view(I, 3, -1)
    assert torch.equal(block[:, 0], experts.gate_up_proj[5][:I])
    assert torch.equal(block[:, 1], experts.gate_up_proj[5][I:])
    assert torch.equal(block[:, 2], experts.down_proj[5].t())
    # a segment is one contiguous byte range
    seg = engine.runtime.store.rows(1, 5, 16, 48)
    assert seg.is_contiguous() and torch.equal(seg.view(torch.float32).view(32, 3, -1), block[16:48])


def test_int8_hand_computed():
    # one group of 64 whose absmax is 127: scale 1.0, so the codes are the values themselves
    vals = torch.arange(-63, 64, 2, dtype=torch.float32)  # 64 odd integers; -127 below sets the absmax
    w = torch.zeros(1, 3, 64)
    w[0, 0] = vals
    w[0, 0, 0] = -127.0
    rows = encode_rows(w, "int8", "float32")
    assert rows.shape == (1, 3 * 64 + 3 * 2)
    codes = rows[0, :64].view(torch.int8)
    assert codes[0].item() == -127 and codes[1:].tolist() == vals[1:].to(torch.int8).tolist()
    assert torch.equal(decode_rows(rows, 64, "int8", "float32", torch.float32), w)


def test_int4_hand_computed():
    # absmax 7 -> scale 1.0; codes stored +8, two per byte, low nibble first
    w = torch.zeros(1, 3, 64)
    w[0, 1, :4] = torch.tensor([7.0, -7.0, 1.0, -8.0 * 7 / 8])
    rows = encode_rows(w, "int4", "float32")
    assert rows.shape == (1, 3 * 32 + 3 * 2)
    up_bytes = rows[0, 32:34].tolist()
    assert up_bytes == [(7 + 8) | ((-7 + 8) << 4), (1 + 8) | ((-7 + 8) << 4)]
    back = decode_rows(rows, 64, "int4", "float32", torch.float32)
    assert back[0, 1, :4].tolist() == [7.0, -7.0, 1.0, -7.0]


@pytest.mark.parametrize("quant,bound", [("int8", 1 / 127), ("int4", 1 / 7)])
def test_quantization_error_within_half_a_step(quant, bound):
    torch.manual_seed(0)
    w = torch.randn(16, 3, 128)
    back = decode_rows(encode_rows(w, quant, "float32"), 128, quant, "float32", torch.float32)
    absmax = w.view(16, 3, 2, 64).abs().amax(-1, keepdim=True)
    err = (back - w).view(16, 3, 2, 64).abs()
    assert (err <= absmax * bound / 2 * 1.01 + 1e-6).all()
    # any segment decodes to the same rows as the whole expert
    rows = encode_rows(w, quant, "float32")
    assert torch.equal(decode_rows(rows[3:11], 128, quant, "float32", torch.float32), back[3:11])


def test_pack_expert_layout():
    gate, up, down = torch.randn(4, 8), torch.randn(4, 8), torch.randn(8, 4)
    packed = pack_expert(gate, up, down)
    assert packed.shape == (4, 3, 8)
    assert torch.equal(packed[2, 2], down[:, 2])


def test_cache_reused_then_rebuilt_when_corrupt(tiny_models, cache_dir):
    folder = tiny_models["olmoe"]
    first = Engine.load(folder, device="cpu", cache_gb=0, cache_dir=cache_dir)
    path = first.runtime.store.path
    good = path.read_bytes()
    mtime = path.stat().st_mtime_ns
    Engine.load(folder, device="cpu", cache_gb=0, cache_dir=cache_dir)
    assert path.stat().st_mtime_ns == mtime  # reused, not rebuilt

    damaged = bytearray(good)
    damaged[-100] ^= 0xFF
    path.write_bytes(bytes(damaged))
    engine = Engine.load(folder, device="cpu", cache_gb=0, cache_dir=cache_dir)
    assert path.read_bytes() == good  # detected and rebuilt
    assert engine.runtime.store.path == path

    path.write_bytes(good[: len(good) // 2])  # truncated
    Engine.load(folder, device="cpu", cache_gb=0, cache_dir=cache_dir)
    assert path.read_bytes() == good
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []  # no temp files left


def test_stale_cache_is_not_used(tiny_models, tmp_path, cache_dir):
    import shutil

    folder = shutil.copytree(tiny_models["mixtral"], tmp_path / "m")
    a = Engine.load(folder, device="cpu", cache_gb=0, cache_dir=cache_dir).runtime.store.path
    b = Engine.load(folder, device="cpu", cache_gb=0, cache_dir=cache_dir, quant="int8").runtime.store.path
    assert a != b  # other options, other cache
    st = (folder / "model.safetensors").stat()
    os.utime(folder / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # weights changed
    c = Engine.load(folder, device="cpu", cache_gb=0, cache_dir=cache_dir).runtime.store.path
    assert c != a
