"""AppConfig: what launch.py's flags decide, validated once."""
from __future__ import annotations

from dataclasses import dataclass

from moepic_core.cache.policies import POLICY_CHOICES  # "auto" first: by measurement
from moepic_core.config import CPU_MODES
from moepic_core.fit import AUTO, QUANT_CHOICES  # "auto" first: the best quality that fits the free RAM and disk
from moepic_core.options import DEVICES, DTYPES, bad
from moepic_core.units import GB

VRAM_RESERVE_GB = 1.0  # left free for the CUDA context, other programs and fragmentation


@dataclass
class AppConfig:
    model: str = "demo"
    vram_gb: float | None = None  # None: detected free VRAM minus the reserve; CPU mode: simulated
    device: str = "auto"
    quant: str = AUTO
    policy: str = "auto"
    dtype: str | None = None
    max_new_tokens: int = 256
    # CPU only: "simulated" holds a VRAM-sized expert cache in RAM (the panels show it at work), "in-place"
    # computes experts where they lie in RAM (fast, nothing cached); "auto": simulated for the demo or
    # when --vram-gb is given, else in place (the engine's rule, EngineConfig.cpu_mode)
    cpu_mode: str = "auto"

    def __post_init__(self):
        """Refuses a bad value in the engine's words (moepic_core.options), so launch.py says what the CLI says."""
        for name, value, allowed in (("device", self.device, DEVICES), ("quant", self.quant, QUANT_CHOICES),
                                     ("policy", self.policy, POLICY_CHOICES)):
            if value not in allowed:
                raise bad(name, value, allowed)
        if self.dtype is not None and self.dtype not in DTYPES:
            raise bad("dtype", self.dtype)
        if self.vram_gb is not None and not self.vram_gb >= 0:
            raise bad("vram_gb", self.vram_gb)
        if self.max_new_tokens < 1:
            raise bad("max_new_tokens", self.max_new_tokens)
        if self.cpu_mode not in CPU_MODES:
            raise bad("cpu_mode", self.cpu_mode, CPU_MODES)


def default_vram_gb(hw: dict, device: str) -> float | None:
    """Free VRAM minus a reserve on a GPU; None in CPU mode (the app then picks a simulated budget)."""
    if device == "cpu" or not hw.get("cuda") or not hw.get("vram_free_bytes"):
        return None
    free = hw["vram_free_bytes"] / GB
    return round(max(0.1, free - max(VRAM_RESERVE_GB, 0.05 * hw.get("vram_total_bytes", 0) / GB)), 2)


def cpu_mode(hw: dict, device: str) -> bool:
    return device == "cpu" or not hw.get("cuda")
