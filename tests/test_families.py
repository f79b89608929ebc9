"""The newer families against transformers' own model on the same weights, through the chat CLI
(`python -m moepic_core.chat --device cpu --dtype float32`, run in-process): greedy tokens identical
with the whole cache, a split cache and no cache; logits within 1e-5 (float32, eager experts).

qwen3_5_moe_vl is the hub's conditional-generation checkpoint of Qwen3.5-MoE (text_config + vision
tower, experts saved fused as on the hub); deepseek_v3/glm4_moe/ernie4_5_moe routers carry random
score-correction biases, deepseek_v2 routes group-limited, phimoe by sparsemixer, granitemoe's
experts are its fused input/output linears.
"""
from __future__ import annotations

import json
import shutil
from functools import cache

import pytest
import torch

from moepic_core import Engine, chat
from moepic_core.models import ADAPTERS, get_adapter, load_spec
from moepic_core.testing import load_reference, make_tiny_model, tiny_config
from moepic_core.runtime.text import chat_input_ids

NEW_FAMILIES = ("qwen3_5_moe", "qwen3_5_moe_vl", "deepseek_v2", "deepseek_v3", "glm4_moe", "phimoe",
                "granitemoe", "ernie4_5_moe", "gpt_oss")
NEW_TOKENS = 8
PROMPT = "hello world, the experts are cached"
CACHES = {"all-resident": ["--cache-gb", "1"], "split-0.5": ["--split", "0.5"], "no-cache": ["--cache-gb", "0"]}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {f: make_tiny_model(f, root / f, seed=0, fused=f == "qwen3_5_moe_vl") for f in NEW_FAMILIES}


@cache
def reference(folder):
    """(transformers' eager model, chat prompt ids, its greedy continuation) for a model folder."""
    ref = load_reference(folder)
    from transformers import AutoTokenizer

    ids = chat_input_ids(AutoTokenizer.from_pretrained(folder), [{"role": "user", "content": PROMPT}])
    out = ref.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
    return ref, ids, out[0, len(ids):].tolist()


def quarter_cache_gb(folder) -> str:
    return str(0.25 * load_spec(folder).store_bytes("none", "float32") / 1e9)


@pytest.mark.parametrize("family", NEW_FAMILIES)
@pytest.mark.parametrize("cache_config", list(CACHES))
def test_chat_cli_matches_transformers(models, family, cache_config, tmp_path, capsys):
    folder = models[family]
    _, _, want = reference(folder)
    args = CACHES[cache_config] + (["--cache-gb", quarter_cache_gb(folder)] if cache_config.startswith("split") else [])
    ids_file, stats_file = tmp_path / "ids.json", tmp_path / "stats.json"
    rc = chat.main(["--model", str(folder), "--device", "cpu", "--dtype", "float32", "--prompt", PROMPT,
                    "--max-new-tokens", str(NEW_TOKENS), "--ids-json", str(ids_file), "--stats-json", str(stats_file),
                    *args])
    assert rc == 0, capsys.readouterr().err
    assert len(want) == NEW_TOKENS  # no early end of text: every step is compared
    assert json.loads(ids_file.read_text()) == want
    totals = json.loads(stats_file.read_text())["totals"]
    if cache_config == "all-resident":
        assert totals["misses"] == 0 and totals["bytes_fetched"] == 0
    elif cache_config == "no-cache":
        assert totals["hits"] == 0 and totals["bytes_fetched"] > 0
    else:
        assert totals["top_hits"] > 0 and totals["misses"] > 0 and totals["full_hits"] == 0


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_split_cache_logits_within_1e5(models, family):
    folder = models[family]
    ref, ids, want = reference(folder)
    engine = Engine.load(folder, device="cpu", dtype="float32", split=0.5, cache_gb=float(quarter_cache_gb(folder)))
    full = torch.tensor([ids + want])
    with torch.no_grad():
        ours, theirs = engine.model(full).logits[0], ref(full).logits[0]
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0), (ours - theirs).abs().max()
    assert engine.spec.moe_layers == tuple(get_adapter(ref.config).moe_layers())


@pytest.mark.parametrize("family", sorted({*NEW_FAMILIES, "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "gpt_oss"}))
def test_adapter_reads_what_the_module_has(family):
    """Sizes, MoE layers and router as the config gives them equal what transformers builds."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    config = tiny_config(family)
    adapter = get_adapter(config)
    assert config.model_type in ADAPTERS
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    layers = model.model.layers
    assert adapter.moe_layers() == [i for i in range(len(layers)) if hasattr(adapter.moe_block(model, i), "experts")]
    assert adapter.moe_layers() != [] and adapter.num_layers == len(layers)
    experts = adapter.moe_block(model, adapter.moe_layers()[0]).experts
    assert experts.down_proj.shape[0] == adapter.num_experts
    assert adapter.intermediate_size * adapter.num_experts * 2 * config.get_text_config().hidden_size == \
        experts.gate_up_proj.numel()
    assert adapter.router(model, adapter.moe_layers()[0]).top_k == adapter.top_k


def test_dense_layers_and_shared_experts_stay_dense(models):
    spec = load_spec(models["deepseek_v2"])
    assert spec.moe_layers == (1, 2) and spec.shared_intermediate_size == 64  # first layer dense; 1 shared expert
    spec = load_spec(models["ernie4_5_moe"])
    assert spec.moe_layers == (1, 2) and spec.shared_intermediate_size == 64
    # Qwen3.5's conditional checkpoint: vision tower not counted, the linear-attention layers keep no KV cache
    text, hub = load_spec(models["qwen3_5_moe"]), load_spec(models["qwen3_5_moe_vl"])
    assert hub.dense_params == text.dense_params and hub.kv_layers == 1 and hub.shared_intermediate_size == 48


def test_missing_experts_name_the_layer(models, tmp_path):
    from safetensors.torch import load_file, save_file

    from moepic_core.errors import ModelLoadError

    src = models["qwen3_5_moe_vl"]
    folder = shutil.copytree(src, tmp_path / "broken", ignore=shutil.ignore_patterns("*.safetensors"))
    tensors = load_file(src / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if "layers.1.mlp.experts" not in k}, folder / "model.safetensors")
    with pytest.raises(ModelLoadError, match="layer 1"):
        load_spec(folder)


def test_dense_dtypes_follow_transformers(models):
    """In half precision, what the family keeps in float32 (routers, score biases) stays float32."""
    from transformers import AutoModelForCausalLM

    from moepic_core.runtime.loader import build_dense_model
    from moepic_core.models import load_config
    from moepic_core.runtime.weights import CheckpointReader

    folder = models["deepseek_v3"]
    config = load_config(folder)
    ours = build_dense_model(config, get_adapter(config), CheckpointReader(folder), torch.bfloat16,
                             torch.device("cpu"))
    theirs = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    dtypes = {k: v.dtype for k, v in theirs.state_dict().items() if ".experts." not in k}
    assert {k: v.dtype for k, v in ours.state_dict().items() if ".experts." not in k} == dtypes
    assert torch.float32 in dtypes.values() and torch.bfloat16 in dtypes.values()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")
@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_cuda_split_cache_matches_transformers(models, family):
    folder = models[family]
    _, ids, _ = reference(folder)
    ref = load_reference(folder).to("cuda")
    engine = Engine.load(folder, device="cuda", dtype="float32", split=0.5, cache_gb=float(quarter_cache_gb(folder)))
    prompt = torch.tensor([ids], device="cuda")
    want = ref.generate(prompt, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)[0, len(ids):].tolist()
    got = engine.generate(ids, NEW_TOKENS)
    assert got == want
    full = torch.tensor([ids + got], device="cuda")
    with torch.no_grad():
        diff = (engine.model(full).logits[0] - ref(full).logits[0]).abs().max().item()
    assert diff < 1e-4  # TF32 and kernel choice differ from the CPU; far below a token flip
