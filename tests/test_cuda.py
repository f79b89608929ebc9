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
    a, b = cpu.snapshot()["totals"], gpu.snapshot()["totals"]
    assert (a["hits"], a["misses"], a["bytes_fetched"]) == (b["hits"], b["misses"], b["bytes_fetched"])
