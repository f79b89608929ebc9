"""Next-layer prefetch: guesses from the next router, their bytes, and measured precision/recall."""
from __future__ import annotations

import pytest
import torch

from moepic_core import Engine
from moepic_core.testing import load_reference

PROMPT = "a mixture of experts routes every token"


@pytest.mark.parametrize("extra", [0, 2])
def test_prefetch_changes_no_output_and_reports_its_accuracy(tiny_models, extra):
    folder = tiny_models["mixtral"]
    kw = dict(device="cpu", split=0.5, cache_gb=0.0004)
    on = Engine.load(folder, prefetch_extra=extra, **kw)
    off = Engine.load(folder, prefetch=False, **kw)
    ids = on.tokenizer(PROMPT)["input_ids"]
    on.start_trace()
    tokens = on.generate(ids, 20, stop_at_eos=False)
    trace = on.stop_trace()
    assert tokens == off.generate(ids, 20, stop_at_eos=False)

    snap_on, snap_off = on.snapshot(), off.snapshot()
    assert sum(l.prefetch_bytes for l in snap_on.layers) > 0
    assert sum(l.prefetch_bytes for l in snap_off.layers) == 0
    assert snap_off.totals.prefetch_precision is None
    assert trace.predicted.shape[2] == 2 + extra
    # precision / recall from the recorded guesses, computed here independently of the engine
    for pos in (1, 2):
        right = sum(len(set(p) & set(a)) for p, a in zip(trace.predicted[:, pos].tolist(),
                                                          trace.experts[:, pos].tolist()))
        layer = snap_on.layers[pos]
        assert layer.prefetch_precision == pytest.approx(right / (len(trace.experts) * (2 + extra)))
        assert layer.prefetch_recall == pytest.approx(right / (len(trace.experts) * 2))
    # all MoE inputs of a decode step are available to check the guess rule: layer 2's router on layer 1's input
    ref = load_reference(folder)
    seen = {}
    h = ref.model.layers[1].mlp.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
    with torch.no_grad():
        ref(torch.tensor([ids + tokens[:1]]))
    h.remove()
    x = seen["x"][0, -1:]
    router = ref.model.layers[2].mlp.gate
    want = torch.topk(torch.nn.functional.linear(x, router.weight), 2 + extra).indices[0].tolist()
    assert sorted(trace.predicted[0, 2].tolist()) == sorted(want)


def test_bfloat16_store_runs_close_to_float32(tiny_models):
    folder = tiny_models["qwen3_moe"]
    b16 = Engine.load(folder, device="cpu", dtype="bfloat16", split=0.5, cache_gb=0.0002)
    f32 = Engine.load(folder, device="cpu", dtype="float32", cache_gb=1)
    assert b16.runtime.store.nbytes * 2 == f32.runtime.store.nbytes
    ids = torch.tensor([b16.tokenizer(PROMPT)["input_ids"]])
    with torch.no_grad():
        a = b16.model(ids).logits[0, -1].float()
        b = f32.model(ids).logits[0, -1]
    assert ((a - b).norm() / b.norm()).item() < 0.05
    assert len(b16.generate(ids[0], 8, stop_at_eos=False)) == 8
