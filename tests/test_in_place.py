"""The CPU fast path: a real model computes every expert where it lies in the memory-mapped store
(nothing copied, nothing staged); bf16 and packed dense linears; the simulated mode stays for the
demo and for a given budget."""
from __future__ import annotations

import pytest
import torch

from moepic_core import Engine
from moepic_core.runtime.pool import Staging
from moepic_core.errors import BudgetError
from moepic_core.runtime.kernels import ExpertKernel, PackedLinear
from moepic_core.models import DEMO_MODEL_DIR
from moepic_core.testing import load_reference, make_tiny_model

PROMPT = "hello world, the experts are cached"


@pytest.fixture(scope="module")
def engine(tiny_models):
    return Engine.load(tiny_models["qwen3_moe"], device="cpu", dtype="float32")


def test_real_model_defaults_to_in_place_and_matches_transformers(engine, tiny_models, monkeypatch):
    assert engine.snapshot().mode == "in-place" and engine.budget.in_place
    assert engine.runtime.pool.nbytes == 0 and engine.runtime.staging.n == 0

    def no_fetch(*args, **kwargs):
        raise AssertionError("in place, nothing is fetched into staging")

    monkeypatch.setattr(Staging, "fetch", no_fetch)
    seen = []
    segment = ExpertKernel.segment

    def spy(self, x, rows, bias=None):
        seen.append(rows.data_ptr())
        return segment(self, x, rows, bias)

    monkeypatch.setattr(ExpertKernel, "segment", spy)
    ref = load_reference(tiny_models["qwen3_moe"])
    ids = engine.tokenizer(PROMPT, return_tensors="pt").input_ids
    want = ref.generate(ids, max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)[0, ids.shape[1]:]
    engine.reset_stats()
    assert engine.generate(ids[0], 16, stop_at_eos=False) == want.tolist()
    totals = engine.snapshot().totals
    assert totals.bytes_fetched == 0 and totals.misses == 0 and totals.hit_rate == 1.0
    # every segment the kernel read lies inside the memory-mapped store file's data
    data = engine.runtime.store.data
    start, end = data.data_ptr(), data.data_ptr() + data.numel()
    assert seen and all(start <= p < end for p in seen)


def test_in_place_has_no_cache_to_resize(engine):
    with pytest.raises(BudgetError, match="in place"):
        engine.reconfigure(cache_gb=0.001)


def test_demo_and_a_given_budget_stay_simulated(tiny_models):
    from moepic_core.runtime.engine import resolve_cpu_mode
    from moepic_core.config import EngineConfig

    cpu = torch.device("cpu")
    assert resolve_cpu_mode(EngineConfig(model="demo"), cpu) == "simulated"
    assert resolve_cpu_mode(EngineConfig(model=str(DEMO_MODEL_DIR)), cpu, DEMO_MODEL_DIR) == "simulated"
    assert resolve_cpu_mode(EngineConfig(model="x", cache_gb=0.1), cpu) == "simulated"
    assert resolve_cpu_mode(EngineConfig(model="x"), cpu) == "in-place"
    assert resolve_cpu_mode(EngineConfig(model="x", cpu_mode="simulated"), cpu) == "simulated"
    engine = Engine.load(tiny_models["olmoe"], device="cpu", dtype="float32", cache_gb=0.0005)
    assert engine.snapshot().mode == "simulated" and engine.runtime.staging.n > 0


@pytest.fixture(scope="module")
def bf16_model(tmp_path_factory):
    # every token uses all 4 experts: no routing decision to flip, so the error is the formats' alone
    return make_tiny_model("mixtral", tmp_path_factory.mktemp("bf16") / "m", seed=2, dtype=torch.bfloat16,
                           hidden_size=128, intermediate_size=128, num_local_experts=4, num_experts_per_tok=4)


@pytest.mark.parametrize("quant,bound", [("none", 0.02), ("int8", 0.05), ("int4", 0.35)])
def test_bf16_checkpoint_runs_bf16_with_packed_dense_linears(bf16_model, quant, bound):
    engine = Engine.load(bf16_model, device="cpu", quant=quant)
    assert engine.dtype == "bfloat16" and engine.snapshot().mode == "in-place"
    packed = [m for m in engine.model.modules() if isinstance(m, PackedLinear)]
    routers = [engine.adapter.moe_block(engine.model, layer).gate for layer in engine.spec.moe_layers]
    # attention projections (4 a layer) and the head are packed, the routers are not
    assert len(packed) == 4 * engine.spec.num_layers + 1
    assert not any(isinstance(m, PackedLinear) for r in routers for m in r.modules())
    head = engine.model.get_output_embeddings()
    assert head.quant == ("int8" if quant == "int4" else quant)
    ref = load_reference(bf16_model)  # float32 from the bf16 weights
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        ours, theirs = engine.model(ids).logits[0, -1].float(), ref(ids).logits[0, -1]
    assert (ours - theirs).norm() / theirs.norm() < bound
