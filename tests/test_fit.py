"""`--quant auto` and the RAM/disk check (moepic_core.fit) on a faked machine: Mixtral-8x7B's sizes
worked out by hand, then the engine and the CLI on a tiny model with the free RAM faked."""
from __future__ import annotations

import os

import pytest

from moepic_core.errors import OptionError
from moepic_core.fit import decide_quant
from moepic_core.presets import PRESETS

GB = 1e9
MIXTRAL = PRESETS["mixtral-8x7b"]
# 32 MoE layers x 8 experts x 14336 neurons x row bytes; a row is 3 x 4096 values (+ one fp16 scale per
# block of 32 values when quantized: 3 x 128 x 2 bytes):
STORE = {"none": 32 * 8 * 14336 * (3 * 4096 * 2),  # bfloat16: 90.19 GB
         "int8": 32 * 8 * 14336 * (3 * 4096 + 3 * 128 * 2),  # 47.92 GB
         "int4": 32 * 8 * 14336 * (3 * 4096 // 2 + 3 * 128 * 2)}  # 25.37 GB
DENSE = 1_600_000_000 * 2  # the preset's dense parameters in bfloat16


def decide(requested="auto", ram=1000 * GB, disk=1000 * GB, cpu=False, cache_dir="/nonexistent-moepic-cache"):
    return decide_quant(MIXTRAL, requested, dtype="bfloat16", cpu=cpu, ram_available=int(ram), disk_free=int(disk),
                        cache_dir=cache_dir)


def test_auto_takes_the_best_quality_that_leaves_room():
    assert decide(ram=200 * GB).quant == "none"
    fit = decide(ram=64 * GB)  # none needs 90.2 GB; int8 47.9 GB leaves more than 20% of 64 GB
    assert (fit.quant, fit.level) == ("int8", "ok")
    assert fit.need.ram_bytes == STORE["int8"]  # on a GPU the dense part is in VRAM, not in host RAM
    message = fit.message()
    assert "quant auto: int8" in message and "47.9 GB" in message and "64.0 GB free" in message
    assert "none would need 90.2 GB" in message


def test_auto_counts_the_dense_part_on_the_cpu():
    assert decide(ram=(STORE["int8"] + DENSE) / 0.8 + 1e6, cpu=True).quant == "int8"
    assert decide(ram=(STORE["int8"] + DENSE) / 0.8 - 1e6, cpu=True).quant == "int4"
    assert decide(ram=64 * GB, cpu=True).need.ram_bytes == STORE["int8"] + DENSE


def test_auto_prefers_room_to_spare_and_says_when_it_is_tight():
    assert decide(ram=55 * GB).quant == "int4"  # int8 (47.9 GB) would fit, but leave the machine 7.1 GB
    tight = decide(ram=27 * GB)  # only int4 (25.4 GB) fits at all
    assert (tight.quant, tight.level) == ("int4", "warn") and "tight" in tight.message()


def test_nothing_fits_is_refused_with_the_numbers():
    with pytest.raises(OptionError) as err:
        decide(ram=16 * GB)
    assert err.value.option == "quant"
    assert "even at int4" in str(err.value) and "25.4 GB" in str(err.value) and "16.0 GB free" in str(err.value)


def test_an_explicit_quant_that_does_not_fit_names_the_one_that_does():
    with pytest.raises(OptionError) as err:
        decide("none", ram=64 * GB)
    text = err.value.flag()
    assert text.startswith("--quant none does not fit") and "90.2 GB" in text and "64.0 GB free" in text
    assert "int8 fits (47.9 GB" in text
    fit = decide("int8", ram=55 * GB)  # an explicit choice that fits, tightly, is taken with a warning
    assert (fit.quant, fit.level) == ("int8", "warn")


def test_disk_for_the_packed_store(tmp_path):
    fit = decide(ram=200 * GB, disk=30 * GB, cache_dir=tmp_path)  # none and int8 would not fit on the disk
    assert fit.quant == "int4" and "25.4 GB of disk" in fit.message()
    with pytest.raises(OptionError, match="of disk in .*30.0 GB free"):
        decide("none", ram=200 * GB, disk=30 * GB, cache_dir=tmp_path)
    built = tmp_path / "mixtral-8x7b-none-bfloat16-0123456789abcdef.experts"
    with open(built, "wb") as f:  # a sparse file of the store's size: a store built before needs no disk
        f.truncate(STORE["none"] + (1 << 16))
    fit = decide(ram=200 * GB, disk=30 * GB, cache_dir=tmp_path)
    assert fit.quant == "none" and fit.need.disk_bytes == 0 and "disk" not in fit.message()


# ---- the engine and the CLI, with the free RAM faked ----

def fake_ram(monkeypatch, folder, fits: str):
    """Free RAM in which `fits` leaves 20% to spare and the next better quant does not fit at all."""
    import moepic_core.fit
    from moepic_core.models import load_spec

    spec = load_spec(folder)
    need = {q: spec.store_bytes(q, "float32") + spec.dense_bytes("float32") for q in ("none", "int8", "int4")}
    ram = int(need[fits] / 0.8) + 1
    assert need["none"] > ram  # the tiny model's full-precision store must not fit, or the test proves nothing
    monkeypatch.setattr(moepic_core.fit, "available_ram_bytes", lambda: ram)
    return need


def test_engine_loads_the_quant_that_fits(tiny_models, monkeypatch, cache_dir):
    from moepic_core import Engine

    fake_ram(monkeypatch, tiny_models["mixtral"], "int8")
    engine = Engine.load(tiny_models["mixtral"], device="cpu", cache_gb=0, cache_dir=cache_dir)  # quant: auto
    assert engine.cfg.quant == "int8" and engine.snapshot().quant == "int8"
    assert engine.fit.message().startswith("quant auto: int8")
    with pytest.raises(OptionError, match="none does not fit this machine.*int8 fits"):
        Engine.load(tiny_models["mixtral"], device="cpu", quant="none", cache_dir=cache_dir)


def test_cli_says_the_choice_and_refuses_an_explicit_one_in_one_line(tiny_models, monkeypatch, capsys, cache_dir):
    from moepic_core.cli.chat import main

    folder = str(tiny_models["mixtral"])
    fake_ram(monkeypatch, folder, "int4")
    assert main(["--model", folder, "--device", "cpu", "--cache-dir", cache_dir, "--prompt", "hi",
                 "--max-new-tokens", "2"]) == 0
    assert "; quant auto: int4, needs" in capsys.readouterr().err
    assert main(["--model", folder, "--device", "cpu", "--cache-dir", cache_dir, "--quant", "int8",
                 "--prompt", "hi"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --quant int8 does not fit this machine")
    assert "int4 fits" in lines[0]
    assert not os.listdir(cache_dir) or all("int8" not in name for name in os.listdir(cache_dir))  # refused early
