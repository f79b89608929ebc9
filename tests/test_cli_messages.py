"""One plain line naming the flag for every bad option of `python -m moepic_core.chat`, in the words the
engine's config uses (checked in-process: no model is loaded), and decoder-layer numbers in its summary."""
from __future__ import annotations

import pytest

from moepic_core.cli.chat import main, summary


@pytest.mark.parametrize("flag, value, expected", [
    ("--split", "abc", "error: --split must be a ratio in (0, 1] or 'auto', got 'abc'"),
    ("--policy", "fifo", "error: --policy must be one of auto, lcp, lcp-filtered, lru, lfu, reuse, static, got 'fifo'"),
    ("--quant", "int3", "error: --quant must be one of auto, none, int8, int4, got 'int3'"),
    ("--vram-gb", "lots", "error: --vram-gb must be a number of GB >= 0, got 'lots'"),
    ("--max-new-tokens", "1.5", "error: --max-new-tokens must be a whole number >= 1, got '1.5'"),
])
def test_a_bad_flag_is_one_line_naming_it(capsys, flag, value, expected):
    with pytest.raises(SystemExit) as exit_:
        main(["--model", "demo", flag, value, "--prompt", "hi"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == expected + "\n"


@pytest.mark.parametrize("flag, value, expected", [
    ("--split", "1.5", "error: --split must be a ratio in (0, 1] or 'auto', got 1.5"),  # parsed, refused by the config
    ("--vram-gb", "-1", "error: --vram-gb must be a number of GB >= 0, got -1.0"),
    ("--device", "tpu", "error: --device must be auto, cpu or cuda[:N], got 'tpu'"),
])
def test_a_value_the_engine_refuses_names_the_flag_too(capsys, flag, value, expected):
    assert main(["--model", "demo", flag, value, "--prompt", "hi"]) == 2
    assert capsys.readouterr().err == expected + "\n"


def test_a_missing_flag_is_one_line(capsys):
    with pytest.raises(SystemExit):
        main(["--model", "demo"])
    assert capsys.readouterr().err == "error: the following arguments are required: --prompt\n"


def test_summary_numbers_layers_as_decoder_layers():
    from dataclasses import replace

    from moepic_core.testing import fake_snapshot

    snap = fake_snapshot(2, 4)
    layers = (replace(snap.layers[0], layer=2, hits=1, misses=3), replace(snap.layers[1], layer=3, hits=2, misses=2))
    totals = replace(snap.totals, tokens=4, tokens_per_s=10.0, hit_rate=0.375, hits=3, misses=5, full_hits=1,
                     top_hits=2, bytes_per_token=2e6)
    line = summary(replace(snap, layers=layers, totals=totals))
    assert line == ("[4 tokens, 10.0 tok/s, hit rate 38% (full 12%, top 25%), 2.00 MB fetched/token; "
                    "hit rate by decoder layer 2: 25%, 3: 50%]")
