"""The packed expert store: layout, quantization, on-disk cache reuse, corruption and staleness."""
from __future__ import annotations

import os

import torch

from moepic_core import Engine
from moepic_core.runtime.quant import decode_expert
from moepic_core.testing import load_reference


def test_store_holds_each_expert_in_chunks(tiny_models, cache_dir):
    folder = tiny_models["mixtral"]
    engine = Engine.load(folder, device="cpu", cache_gb=0, cache_dir=cache_dir)
    ref = load_reference(folder)
    experts = ref.model.layers[1].mlp.experts
    I, H = engine.spec.intermediate_size, engine.spec.hidden_size
    store = engine.runtime.store
    gate, up, down = decode_expert(store.rows(1, 5, 0, I), H, "none", "float32", torch.float32)
    assert torch.equal(gate, experts.gate_up_proj[5][:I]) and torch.equal(up, experts.gate_up_proj[5][I:])
    assert torch.equal(down, experts.down_proj[5])
    # neurons 32..95 (chunks 1 and 2) are one contiguous byte range: gate, up, down of each chunk
    seg = store.rows(1, 5, 32, 96)
    assert seg.is_contiguous() and seg.data_ptr() == store.rows(1, 5, 0, I).data_ptr() + 32 * store.row_bytes
    chunk = seg[:32].reshape(-1).view(torch.float32)
    assert torch.equal(chunk[:32 * H].view(32, H), experts.gate_up_proj[5][32:64])
    assert torch.equal(chunk[2 * 32 * H:].view(H, 32), experts.down_proj[5][:, 32:64])


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
