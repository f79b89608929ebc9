"""EngineConfig: every option of `Engine.load`, validated on creation."""
from __future__ import annotations

from dataclasses import dataclass, field

from .cache.policies import POLICY_CHOICES
from .spec import QUANTS

DTYPES = ("float32", "bfloat16", "float16")
CPU_MODES = ("auto", "in-place", "simulated")
GB = 1e9


@dataclass(frozen=True)
class EngineConfig:
    model: str
    vram_gb: float | None = None  # everything the engine may use on the device
    cache_gb: float | None = None  # the expert cache alone (overrides vram_gb's share)
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    dtype: str | None = None  # None: float32 on the CPU, the checkpoint's half type on CUDA
    quant: str = "none"
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
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.quant not in QUANTS:
            raise ValueError(f"quant must be one of {', '.join(QUANTS)}, got {self.quant!r}")
        if self.policy not in POLICY_CHOICES:
            raise ValueError(f"policy must be one of {', '.join(POLICY_CHOICES)}, got {self.policy!r}")
        for name in ("vram_gb", "cache_gb"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if isinstance(self.split, str) and self.split != "auto":
            raise ValueError(f"split must be a ratio in (0, 1] or 'auto', got {self.split!r}")
        if isinstance(self.split, (int, float)) and not 0 < self.split <= 1:
            raise ValueError(f"split must be a ratio in (0, 1], got {self.split}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        if self.cpu_mode not in CPU_MODES:
            raise ValueError(f"cpu_mode must be one of {', '.join(CPU_MODES)}, got {self.cpu_mode!r}")
        if self.dense_quant is not None and self.dense_quant not in QUANTS:
            raise ValueError(f"dense_quant must be one of {', '.join(QUANTS)}, got {self.dense_quant!r}")
        if self.max_context < 1 or self.prefetch_extra < 0:
            raise ValueError("max_context must be >= 1 and prefetch_extra >= 0")
