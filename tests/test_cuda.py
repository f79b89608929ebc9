"""The CUDA path: copy stream, events, pinned store. Runs only where CUDA is present."""
from __future__ import annotations

import pytest
import torch

from moepic_core import Engine
from moepic_core.testing import load_reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")


@pytest.mark.parametrize("options", [dict(cache_gb=1.0), dict(cache_gb=0.0003, split=0.5), dict(cache_gb=0.0)])
def test_cuda_engine_matches_transformers(tiny_models, options):
    folder = tiny_models["mixtral"]
    engine = Engine.load(folder, device="cuda", dtype="float32", **options)
    assert engine.runtime.store.pinned
    ref = load_reference(folder).to("cuda")
    ids = engine.tokenizer("hello world, the experts", return_tensors="pt").input_ids.to("cuda")
    want = ref.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0)[0, ids.shape[1]:]
    got = engine.generate(ids[0], 24, stop_at_eos=False)
    assert got == want.tolist()
    full = torch.cat([ids, torch.tensor([got], device="cuda")], dim=1)
    with torch.no_grad():
        diff = (engine.model(full).logits[0, -1] - ref(full).logits[0, -1]).abs().max().item()
    assert diff < 1e-4  # TF32 and kernel choice differ from the CPU; still far below a token flip


def test_cuda_and_cpu_agree_under_prefetch(tiny_models):
    folder = tiny_models["qwen2_moe"]
    kw = dict(dtype="float32", cache_gb=0.0002, split=0.5, prefetch_extra=1)
    cpu = Engine.load(folder, device="cpu", **kw)
    gpu = Engine.load(folder, device="cuda", **kw)
    ids = cpu.tokenizer("the quick brown fox")["input_ids"]
    assert cpu.generate(ids, 16, stop_at_eos=False) == gpu.generate(ids, 16, stop_at_eos=False)
    a, b = cpu.snapshot().totals, gpu.snapshot().totals
    assert (a.hits, a.misses, a.bytes_fetched) == (b.hits, b.misses, b.bytes_fetched)


@pytest.mark.parametrize("quant", ["none", "int8", "int4"])
def test_cuda_peak_memory_stays_within_the_budget(tmp_path, quant):
    """What the kernels really allocate is covered by the VRAM budget (dense, KV, staging, workspace,
    cache): peak allocated memory during a generation never passes it."""
    from moepic_core.testing import make_tiny_model

    folder = make_tiny_model("mixtral", tmp_path / "m", hidden_size=256, intermediate_size=512, num_hidden_layers=2)
    probe = Engine.load(folder, device="cuda", dtype="float16", quant=quant, cache_gb=0.0)
    vram_gb = probe.min_vram_gb + 0.25 * probe.spec.store_bytes(quant, "float16") / 1e9
    del probe
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    engine = Engine.load(folder, device="cuda", dtype="float16", quant=quant, vram_gb=vram_gb, max_context=256)
    ids = engine.tokenizer("hello world, the experts are cached " * 4)["input_ids"]
    engine.generate(ids, 32, stop_at_eos=False)
    peak = torch.cuda.max_memory_allocated() - base
    assert peak <= vram_gb * 1e9, (peak, vram_gb * 1e9)


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_cuda_kernels_match_the_cpu_kernels(quant):
    from moepic_core.runtime.kernels import ExpertKernel
    from moepic_core.runtime.quant import encode_expert

    torch.manual_seed(0)
    rows = encode_expert(torch.randn(128, 256) * 0.05, torch.randn(128, 256) * 0.05, torch.randn(256, 128) * 0.05,
                         quant, "float32")
    x = torch.randn(3, 256)
    cpu = ExpertKernel(quant, "float32", 256, 128, torch.device("cpu"), torch.float32).segment(x, rows)
    gpu = ExpertKernel(quant, "float32", 256, 128, torch.device("cuda"), torch.float32).segment(
        x.cuda(), rows.cuda())
    assert torch.allclose(gpu.float().cpu(), cpu, atol=1e-4)
