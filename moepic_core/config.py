"""EngineConfig: every option of `Engine.load`, validated on creation."""
from __future__ import annotations

from dataclasses import dataclass, field

from .cache.policies import POLICY_CHOICES
from .fit import AUTO, QUANT_CHOICES
from .options import DEVICES, DTYPES, bad
from .spec import QUANTS

CPU_MODES = ("auto", "in-place", "simulated")


@dataclass(frozen=True)
class EngineConfig:
    model: str
    vram_gb: float | None = None  # everything the engine may use on the device
    cache_gb: float | None = None  # the expert cache alone (overrides vram_gb's share)
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    dtype: str | None = None  # None: float32 on the CPU, the checkpoint's half type on CUDA
    quant: str = AUTO  # "auto": the best quality that fits host RAM and disk (fit.py); or none/int8/int4
    policy: str = "auto"  # a registered policy, or "auto": chosen by replaying the calibration trace
    split: float | str | None = None  # None/"auto": the solver's layout; a float: uniform layout at that ratio
    max_context: int = 4096  # tokens the KV reserve is sized for
    prefetch: bool = True
    prefetch_extra: int = 0  # guesses beyond top-k
    cache_dir: str | None = None  # where packed expert stores live (default ~/.cache/moepic)
    policy_params: dict = field(default_factory=dict)
    # CPU only: "in-place" computes every expert where it lies in the memory-mapped store (fast, the
    # default for a real model); "simulated" holds a VRAM-sized cache in RAM to show the cache at work
    # (the default for the demo or when a budget is given)
    cpu_mode: str = "auto"
    dense_quant: str | None = None  # CPU dense linears: None = same as quant; "none" keeps them float

    def __post_init__(self):
        if self.dtype is not None and self.dtype not in DTYPES:
            raise bad("dtype", self.dtype)
        if self.quant not in QUANT_CHOICES:
            raise bad("quant", self.quant, QUANT_CHOICES)
        if self.policy not in POLICY_CHOICES:
            raise bad("policy", self.policy, POLICY_CHOICES)
        for name in ("vram_gb", "cache_gb"):
            value = getattr(self, name)
            if value is not None and not value >= 0:  # also refuses NaN
                raise bad(name, value)
        if self.split not in (None, "auto") and not (isinstance(self.split, (int, float)) and 0 < self.split <= 1):
            raise bad("split", self.split)
        if not (self.device in DEVICES or self.device.startswith("cuda:")):
            raise bad("device", self.device)
        if self.max_context < 1:
            raise bad("max_context", self.max_context)
        if self.prefetch_extra < 0:
            raise bad("prefetch_extra", self.prefetch_extra)
        if self.cpu_mode not in CPU_MODES:
            raise bad("cpu_mode", self.cpu_mode, CPU_MODES)
        if self.dense_quant is not None and self.dense_quant not in QUANTS:
            raise bad("dense_quant", self.dense_quant, QUANTS)
