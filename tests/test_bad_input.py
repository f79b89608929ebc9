"""Bad input gets a clear message (Engine.load raises; the CLI prints one line and exits 2)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from moepic_core import Engine
from moepic_core.errors import BudgetError, GenerationError, ModelLoadError, UnsupportedModelError


def copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


def cli(*args):
    return subprocess.run([sys.executable, "-m", "moepic_core.chat", *args], capture_output=True, text=True,
                          timeout=120)


def test_missing_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        Engine.load(tmp_path / "nope", device="cpu")


def test_folder_without_weights(tiny_models, tmp_path):
    folder = copy_model(tiny_models["mixtral"], tmp_path / "m")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no \\*.safetensors weights"):
        Engine.load(folder, device="cpu")


def test_folder_without_config(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="config.json"):
        Engine.load(tmp_path, device="cpu")


@pytest.mark.parametrize("damage", ["truncate", "garbage-header"])
def test_corrupt_safetensors(tiny_models, tmp_path, damage):
    folder = copy_model(tiny_models["mixtral"], tmp_path / "m")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\xff" * 64 + data[64:])
    with pytest.raises(ModelLoadError, match="corrupt safetensors"):
        Engine.load(folder, device="cpu")


def test_unsupported_architecture(tiny_models, tmp_path):
    folder = copy_model(tiny_models["mixtral"], tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "llama"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError) as err:
        Engine.load(folder, device="cpu")
    assert "'llama'" in str(err.value)
    for family in ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe"):
        assert family in str(err.value)


def test_budget_below_minimum_states_the_minimum(tiny_models):
    folder = tiny_models["mixtral"]
    minimum = Engine.load(folder, device="cpu", cache_gb=0).budget.min_vram_bytes
    with pytest.raises(BudgetError) as err:
        Engine.load(folder, device="cpu", vram_gb=minimum / 2 / 1e9)
    assert err.value.min_bytes == minimum
    assert f"minimum {minimum / 1e9:.3f} GB" in str(err.value)


def test_empty_prompt_and_message(tiny_models):
    engine = Engine.load(tiny_models["mixtral"], device="cpu", cache_gb=0)
    with pytest.raises(GenerationError, match="empty"):
        engine.generate([], 5)
    with pytest.raises(GenerationError, match="empty message"):
        list(engine.stream_chat([{"role": "user", "content": "   "}]))
    with pytest.raises(GenerationError, match="empty message"):
        list(engine.stream_chat([]))


def test_bad_options_are_refused(tiny_models):
    folder = tiny_models["mixtral"]
    for bad in (dict(quant="int3"), dict(policy="fifo"), dict(split=1.5), dict(dtype="int8"), dict(cache_gb=-1)):
        with pytest.raises(ValueError):
            Engine.load(folder, device="cpu", **bad)


def test_cli_errors_are_one_line_exit_2(tiny_models, tmp_path):
    cases = [
        ["--model", str(tmp_path / "missing"), "--prompt", "hi"],
        ["--model", str(tiny_models["mixtral"]), "--prompt", "  "],
        ["--model", str(tiny_models["mixtral"]), "--vram-gb", "0.0001", "--prompt", "hi"],
        ["--model", str(tiny_models["mixtral"]), "--quant", "int8", "--policy", "fifo", "--prompt", "hi"],
    ]
    for args in cases:
        r = cli(*args)
        assert r.returncode == 2, r.stderr
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "minimum" in cli(*cases[2]).stderr


def test_cli_streams_and_writes_ids(tiny_models, tmp_path):
    ids_file, stats_file = tmp_path / "ids.json", tmp_path / "stats.json"
    folder = tiny_models["qwen3_moe"]
    r = cli("--model", str(folder), "--cache-gb", "0.0003", "--split", "0.5", "--prompt", "hello world", "--raw",
            "--max-new-tokens", "12", "--ids-json", str(ids_file), "--stats-json", str(stats_file), "--device", "cpu")
    assert r.returncode == 0, r.stderr
    ids = json.loads(ids_file.read_text())
    assert 1 <= len(ids) <= 12
    engine = Engine.load(folder, device="cpu", cache_gb=0)
    prompt = engine.tokenizer("hello world")["input_ids"]
    assert engine.generate(prompt, 12) == ids  # same greedy tokens as the API
    assert r.stdout.rstrip("\n") == engine.tokenizer.decode(ids, skip_special_tokens=True)
    stats = json.loads(stats_file.read_text())
    assert stats["layers"][0]["split_ratio"] == 0.5
    assert re.search(r"\d+ tokens, [\d.]+ tok/s", r.stderr)
