"""AppConfig: what launch.py's flags decide, validated once."""
from __future__ import annotations

from dataclasses import dataclass

from moepic_core.cache.policies import POLICY_CHOICES as POLICIES  # noqa: F401 ("auto" first: by measurement)

DEVICES = ("auto", "cpu", "cuda")
QUANTS = ("none", "int8", "int4")
GB = 1e9  # the engine's vram_gb and the UI's GB are decimal gigabytes
VRAM_RESERVE_GB = 1.0  # left free for the CUDA context, other programs and fragmentation
SIMULATED_CACHE_SHARE = 0.35  # CPU mode default: a cache for about this share of all expert bytes


@dataclass
class AppConfig:
    model: str = "demo"
    vram_gb: float | None = None  # None: detected free VRAM minus the reserve; CPU mode: simulated
    device: str = "auto"
    quant: str = "none"
    policy: str = "auto"
    dtype: str | None = None
    max_new_tokens: int = 256

    def __post_init__(self):
        for name, value, allowed in (("device", self.device, DEVICES), ("quant", self.quant, QUANTS),
                                     ("policy", self.policy, POLICIES)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        if self.vram_gb is not None and self.vram_gb <= 0:
            raise ValueError(f"vram_gb must be positive; got {self.vram_gb}")


def default_vram_gb(hw: dict, device: str) -> float | None:
    """Free VRAM minus a reserve on a GPU; None in CPU mode (the app then picks a simulated budget)."""
    if device == "cpu" or not hw.get("cuda") or not hw.get("vram_free_bytes"):
        return None
    free = hw["vram_free_bytes"] / GB
    return round(max(0.1, free - max(VRAM_RESERVE_GB, 0.05 * hw.get("vram_total_bytes", 0) / GB)), 2)


def cpu_mode(hw: dict, device: str) -> bool:
    return device == "cpu" or not hw.get("cuda")
