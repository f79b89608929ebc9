"""Which expert quantization fits this machine. Plain Python (no torch): the engine, the CLI and the app
all decide here, so they agree.

    RAM need  = the packed expert store at (quant, dtype)   (spec.store_bytes)
                + the dense part when it computes on the CPU (on a GPU it lives in VRAM)
    disk need = the packed store again, written once to the cache folder; nothing when a store for
                this model, quant and dtype is already there

`--quant auto` takes the best quality (none, then int8, then int4) whose RAM need leaves
SPARE_SHARE of the free RAM unused and whose store fits on the disk; failing that, the best that fits
at all (a tight fit, said so); failing that, a refusal with the numbers. An explicit quant that does
not fit is refused with its numbers and the quant that would fit.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import OptionError
from .options import bad
from .spec import QUANTS
from .units import fmt_bytes as gb

AUTO = "auto"
QUANT_CHOICES = (AUTO, *QUANTS)  # QUANTS is best quality first
SPARE_SHARE = 0.2  # "auto" prefers a quant that leaves this share of the free RAM for everything else


def available_ram_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def free_disk_bytes(folder: Path) -> int:
    """Free bytes on the disk that holds `folder` (or its nearest existing parent)."""
    folder = Path(folder).expanduser().absolute()
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return int(shutil.disk_usage(folder).free)


@dataclass(frozen=True)
class QuantNeed:
    """What one quantization needs on this machine, in bytes."""

    quant: str
    store_bytes: int
    dense_bytes: int  # counted in RAM only when the model computes on the CPU
    disk_bytes: int  # 0 when the store is already built

    @property
    def ram_bytes(self) -> int:
        return self.store_bytes + self.dense_bytes

    def ram_text(self) -> str:
        dense = f" + dense part {gb(self.dense_bytes)}" if self.dense_bytes else ""
        return f"{gb(self.ram_bytes)} of RAM (experts {gb(self.store_bytes)}{dense})"


@dataclass(frozen=True)
class QuantFit:
    """The decision: `quant` to use, why, and what every quantization would have needed."""

    requested: str
    quant: str
    level: str  # "ok" or "warn" (tight: less than SPARE_SHARE of the free RAM left)
    ram_available: int
    disk_free: int
    needs: tuple[QuantNeed, ...]

    @property
    def need(self) -> QuantNeed:
        return next(n for n in self.needs if n.quant == self.quant)

    def message(self) -> str:
        """One line: the choice with its numbers, e.g. "quant auto: int8, needs 13.8 GB of RAM (...) of
        20.1 GB free; none would need 25.3 GB"."""
        head = f"quant {self.quant}" if self.requested != AUTO else f"quant auto: {self.quant}"
        text = f"{head}, needs {self.need.ram_text()} of {gb(self.ram_available)} free"
        if self.need.disk_bytes:
            text += f", and {gb(self.need.disk_bytes)} of disk once for the packed store ({gb(self.disk_free)} free)"
        better = [n for n in self.needs if QUANTS.index(n.quant) < QUANTS.index(self.quant)]
        if self.requested == AUTO and better:
            text += "; " + ", ".join(f"{n.quant} would need {gb(n.ram_bytes)}" for n in better)
        if self.level == "warn":
            text += f"; tight: less than {SPARE_SHARE:.0%} of the free RAM is left, the machine may swap"
        return text


def store_is_built(cache_dir: Path, spec, quant: str, dtype: str) -> bool:
    """A packed store of this model, quant and dtype is already in `cache_dir` (checked in full at load)."""
    need = spec.store_bytes(quant, dtype)
    return any(p.stat().st_size >= need for p in Path(cache_dir).expanduser().glob(spec.store_file(quant, dtype)))


def quant_needs(spec, dtype: str, cpu: bool, cache_dir: Path) -> tuple[QuantNeed, ...]:
    dense = spec.dense_bytes(dtype) if cpu else 0
    return tuple(QuantNeed(q, spec.store_bytes(q, dtype), dense,
                           0 if store_is_built(cache_dir, spec, q, dtype) else spec.store_bytes(q, dtype))
                 for q in QUANTS)


def _fits(need: QuantNeed, ram: int, disk: int, share: float) -> bool:
    return need.ram_bytes <= share * ram and need.disk_bytes <= disk


def decide_quant(spec, requested: str, *, dtype: str, cpu: bool, ram_available: int, disk_free: int,
                 cache_dir: Path) -> QuantFit:
    """The quant for `requested` ("auto", "none", "int8", "int4"); OptionError("quant", ...) when it
    does not fit, naming what would."""
    if requested not in QUANT_CHOICES:
        raise bad("quant", requested, QUANT_CHOICES)
    needs = quant_needs(spec, dtype, cpu, cache_dir)
    roomy = [n for n in needs if _fits(n, ram_available, disk_free, 1 - SPARE_SHARE)]
    tight = [n for n in needs if _fits(n, ram_available, disk_free, 1.0)]
    decide = lambda n: QuantFit(requested, n.quant, "ok" if n in roomy else "warn",  # noqa: E731
                                ram_available, disk_free, needs)
    if requested == AUTO:
        if roomy or tight:
            return decide((roomy or tight)[0])
        smallest = needs[-1]
        raise OptionError("quant", f"auto: {spec.name} does not fit this machine even at {smallest.quant}: "
                                   f"{_shortfall(smallest, ram_available, disk_free, cache_dir)}")
    need = needs[QUANTS.index(requested)]
    if need in tight:
        return decide(need)
    fitting = roomy or tight  # the one "auto" would take
    alternative = f"{fitting[0].quant} fits ({gb(fitting[0].ram_bytes)} of RAM)" if fitting else "no quantization fits"
    raise OptionError("quant", f"{requested} does not fit this machine: "
                               f"{_shortfall(need, ram_available, disk_free, cache_dir)}; {alternative}")


def _shortfall(need: QuantNeed, ram: int, disk: int, cache_dir: Path) -> str:
    if need.ram_bytes > ram:
        return f"needs {need.ram_text()}, {gb(ram)} free"
    return (f"the packed store needs {gb(need.disk_bytes)} of disk in {cache_dir}, {gb(disk)} free "
            "(MOEPIC_CACHE_DIR or --cache-dir puts it on another disk)")


def fit_quant(spec, requested: str, *, dtype: str, cpu: bool, cache_dir: str | Path,
              ram_available: int | None = None) -> QuantFit:
    """`decide_quant` on this machine: its free RAM now and the free disk under `cache_dir`, the folder
    of packed stores (`moepic_core.fsutil.default_cache_dir()` unless the user chose one)."""
    folder = Path(cache_dir).expanduser()
    ram = available_ram_bytes() if ram_available is None else ram_available
    return decide_quant(spec, requested, dtype=dtype, cpu=cpu, ram_available=ram,
                        disk_free=free_disk_bytes(folder), cache_dir=folder)
