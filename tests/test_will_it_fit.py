"""scripts/will_it_fit.py: the README's tables are replaced between their markers, nothing else; a
card's budget is the app's; a card below the engine's minimum shows no speed."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("will_it_fit", ROOT / "scripts" / "will_it_fit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_only_the_marked_section_is_replaced(script):
    text = f"# Title\n\nbefore\n\n{script.START}\nold table\n{script.END}\n\nafter\n"
    out = script.replace_section(text, "new table")
    assert out == f"# Title\n\nbefore\n\n{script.START}\nnew table\n{script.END}\n\nafter\n"
    with pytest.raises(SystemExit, match="markers"):
        script.replace_section("no markers here", "x")


def test_the_readme_has_the_markers(script):
    text = (ROOT / "README.md").read_text()
    assert text.count(script.START) == 1 and text.count(script.END) == 1


def test_a_card_budget_is_the_card_minus_the_apps_reserve(script):
    assert script.card_budget_gb(12) == 11.0  # 1 GB reserve below 20 GB
    assert script.card_budget_gb(24) == 22.8  # 5% above


def test_rows_for_a_small_model(script):
    from moepic_core.presets import PRESETS
    from moepic_core.cli.solve import default_trace

    spec = PRESETS["olmoe-1b-7b"]
    rows = script.model_rows(spec, default_trace(spec, tokens=64), "bfloat16", "bfloat16", cards=(1, 8))
    assert [r["quant"] for r in rows] == ["none (16-bit)", "int8", "int4"]
    none = rows[0]
    assert none["ram_gpu"] == spec.store_bytes("none", "bfloat16") == 16 * 64 * 1024 * 3 * 2048 * 2
    assert none["ram_cpu"] == none["ram_gpu"] + spec.dense_bytes("bfloat16")
    assert none["tok_s"][0] is None  # a 1 GB card is below the minimum (the dense part alone is ~1 GB)
    assert all(r["tok_s"][1] > 0 for r in rows)
    assert rows[2]["tok_s"][1] >= rows[0]["tok_s"][1]  # int4 moves fewer bytes than 16-bit at the same card
    table = script.markdown(spec, "allenai/OLMoE-1B-7B-0924-Instruct", rows, "bfloat16", cards=(1, 8))
    assert "| none (16-bit) | 12.9 GB |" in table and "| – |" in table
