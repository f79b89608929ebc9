"""GPT-OSS, checkpoint side: its experts read from the float layout (save_pretrained) and from the hub's
MXFP4 layout (`*_blocks`/`*_scales`, written here from a tiny seeded model) equal what transformers'
own model holds after loading the same files; the biases and the clamped SwiGLU reproduce
transformers' expert output, also when computed in two neuron segments with the down bias added once.
The engine refuses to run GPT-OSS until the runtime computes that math."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from moepic_core import Engine
from moepic_core.models import get_adapter, load_config, load_spec
from moepic_core.models.gpt_oss import decode_mxfp4
from moepic_core.runtime.weights import CheckpointReader
from moepic_core.testing import load_reference, make_tiny_model

# OCP MX E2M1 values of the 16 codes (sign bit, 2 exponent bits, 1 mantissa bit), from the format spec
E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def encode_mxfp4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float [R, C] -> (blocks uint8 [R, C/32, 16], scales uint8 [R, C/32]): nearest E2M1 value per
    element, one power-of-two scale per 32 (largest magnitude maps to at most 6), low nibble first."""
    rows, cols = w.shape
    groups = w.reshape(rows, cols // 32, 32)
    exponent = torch.ceil(torch.log2(groups.abs().amax(-1).clamp_min(1e-30) / 6.0))
    scaled = groups / torch.exp2(exponent).unsqueeze(-1)
    codes = (scaled.unsqueeze(-1) - torch.tensor(E2M1)).abs().argmin(-1).to(torch.uint8)
    return codes[..., 0::2] | (codes[..., 1::2] << 4), (exponent + 127).to(torch.uint8)


@pytest.fixture(scope="module")
def float_model(tmp_path_factory):
    return make_tiny_model("gpt_oss", tmp_path_factory.mktemp("gpt_oss") / "float", seed=0)


@pytest.fixture(scope="module")
def mxfp4_model(float_model, tmp_path_factory):
    """The tiny model with its experts in the hub's layout: [E, out, in/32, 16] blocks, [E, out, in/32] scales."""
    folder = shutil.copytree(float_model, tmp_path_factory.mktemp("gpt_oss") / "mxfp4",
                             ignore=shutil.ignore_patterns("*.safetensors"))
    tensors = {}
    for key, value in load_file(float_model / "model.safetensors").items():
        if key.endswith(("experts.gate_up_proj", "experts.down_proj")):
            w = value.transpose(1, 2)  # in memory [E, in, out] -> on the hub [E, out, in]
            blocks, scales = encode_mxfp4(w.reshape(-1, w.shape[-1]))
            tensors[f"{key}_blocks"] = blocks.reshape(*w.shape[:2], -1, 16).contiguous()
            tensors[f"{key}_scales"] = scales.reshape(*w.shape[:2], -1).contiguous()
        else:
            tensors[key] = value
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def read_expert(folder, layer, expert):
    adapter = get_adapter(load_config(folder))
    return adapter, adapter.expert_weights(CheckpointReader(folder), layer, expert)


def assert_matches_module(w, experts, e):
    """ExpertWeights == transformers' GptOssExperts parameters of expert e, de-interleaved."""
    assert torch.equal(w.gate, experts.gate_up_proj[e][:, 0::2].t())
    assert torch.equal(w.up, experts.gate_up_proj[e][:, 1::2].t())
    assert torch.equal(w.down, experts.down_proj[e].t())
    assert torch.equal(w.gate_bias, experts.gate_up_proj_bias[e][0::2])
    assert torch.equal(w.up_bias, experts.gate_up_proj_bias[e][1::2])
    assert torch.equal(w.down_bias, experts.down_proj_bias[e])


@pytest.mark.parametrize("layout", ["float", "mxfp4"])
def test_experts_equal_transformers_loaded_model(float_model, mxfp4_model, layout):
    folder = float_model if layout == "float" else mxfp4_model
    ref = load_reference(folder)  # transformers dequantizes MXFP4 itself when loading on the CPU
    for layer, expert in [(0, 0), (1, 5), (2, 7)]:
        _, w = read_expert(folder, layer, expert)
        assert_matches_module(w, ref.model.layers[layer].mlp.experts, expert)
    if layout == "mxfp4":  # the decoded weights are the 4-bit ones, not the float originals
        orig = load_reference(float_model).model.layers[1].mlp.experts.gate_up_proj[5]
        assert not torch.equal(orig, ref.model.layers[1].mlp.experts.gate_up_proj[5])


def test_mxfp4_hand_computed():
    # byte 0x21: low nibble 1 (0.5) first, high nibble 2 (1.0); 0xF9: 9 (-0.5), 15 (-6.0); scale 2^(129-127)
    blocks = torch.zeros(1, 1, 16, dtype=torch.uint8)
    blocks[0, 0, :2] = torch.tensor([0x21, 0xF9], dtype=torch.uint8)
    out = decode_mxfp4(blocks, torch.tensor([[129]], dtype=torch.uint8))
    assert out.shape == (1, 32)
    assert out[0, :4].tolist() == [2.0, 4.0, -2.0, -24.0] and not out[0, 4:].any()
    # scale byte 127 is 2^0, 120 is 2^-7
    assert decode_mxfp4(blocks, torch.tensor([[120]], dtype=torch.uint8))[0, :2].tolist() == [0.5 / 128, 1 / 128]


def test_mxfp4_matches_transformers_dequantizer():
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (2, 6, 3, 16), dtype=torch.uint8, generator=g)
    scales = torch.randint(110, 140, (2, 6, 3), dtype=torch.uint8, generator=g)
    theirs = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)  # [E, 96, 6]: in memory, transposed
    ours = torch.stack([decode_mxfp4(blocks[e], scales[e]) for e in range(2)])  # [E, 6, 96]
    assert torch.equal(ours, theirs.transpose(1, 2))


def gpt_oss_segment(x, w, start, stop, alpha, limit):
    """Rows [start, stop) of the documented expert math, without the down bias: x [T, H] -> [T, H]."""
    gate = (x @ w.gate[start:stop].t() + w.gate_bias[start:stop]).clamp(max=limit)
    up = (x @ w.up[start:stop].t() + w.up_bias[start:stop]).clamp(-limit, limit)
    return ((up + 1) * gate * torch.sigmoid(alpha * gate)) @ w.down[:, start:stop].t()


def test_expert_math_and_split_match_transformers(mxfp4_model):
    adapter, w = read_expert(mxfp4_model, 1, 5)
    experts = load_reference(mxfp4_model).model.layers[1].mlp.experts
    x = 3 * torch.randn(4, adapter.text_config.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = experts(x, torch.full((4, 1), 5), torch.ones(4, 1))  # expert 5, routing weight 1
    alpha, limit = adapter.swiglu["alpha"], adapter.swiglu["limit"]
    inter = adapter.intermediate_size
    whole = gpt_oss_segment(x, w, 0, inter, alpha, limit) + w.down_bias
    split = gpt_oss_segment(x, w, 0, 32, alpha, limit) + gpt_oss_segment(x, w, 32, inter, alpha, limit) + w.down_bias
    assert torch.allclose(whole, want, atol=1e-5, rtol=0) and torch.allclose(split, want, atol=1e-5, rtol=0)
    assert (x @ w.gate.t() + w.gate_bias).max() > limit  # the clamp is exercised


def test_spec_of_both_layouts(float_model, mxfp4_model):
    a, b = load_spec(float_model), load_spec(mxfp4_model)
    assert (a.family, a.num_experts, a.top_k, a.intermediate_size, a.moe_layers) == ("gpt_oss", 8, 2, 64, (0, 1, 2))
    assert b.dense_params == a.dense_params  # blocks, scales and biases are expert tensors


@pytest.mark.parametrize("options", [dict(cache_gb=1.0), dict(split=0.5), dict(cache_gb=0.0), dict(quant="int8")])
def test_engine_runs_gpt_oss_from_mxfp4(mxfp4_model, options):
    """Biases travel with their neurons, the down bias is added once per expert, the clamped SwiGLU
    is computed by the kernels: greedy tokens and logits as transformers' own model (MXFP4 dequantised
    by transformers), whole, split and uncached; int8 stays close."""
    if "split" in options:
        options = dict(options, cache_gb=0.3 * load_spec(mxfp4_model).store_bytes("none", "float32") / 1e9)
    engine = Engine.load(mxfp4_model, device="cpu", dtype="float32", dense_quant="none", **options)
    ref = load_reference(mxfp4_model)
    ids = torch.tensor([[3, 14, 15, 92, 65, 35]])
    with torch.no_grad():
        ours, theirs = engine.model(ids).logits[0, -1], ref(ids).logits[0, -1]
    if "quant" in options:
        assert (ours - theirs).norm() / theirs.norm() < 0.05
        return
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0), (ours - theirs).abs().max()
    want = ref.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)[0, 6:].tolist()
    assert engine.generate(ids[0], 8, stop_at_eos=False) == want
