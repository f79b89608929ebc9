"""Hardware profile: GPU and VRAM via NVML, RAM and cores via psutil, measured host-to-device bandwidth.

`detect()` never raises for missing hardware: without NVML or CUDA the profile says `gpu: None`,
`cuda: False`. With `measure=True` and CUDA present it times pinned host-to-device copies (median of
several 64-256 MB copies, GB/s = 1e9 bytes/s) and the batch-1 expert forward for the given shapes.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass

# A CPU-mode default for the solver when nothing was measured: PCIe 4.0 x16 from pinned memory.
# Labelled "simulated" wherever it is used.
DEFAULT_BANDWIDTH_GBPS = 25.0
# CPU expert-compute throughput (GB/s of weight bytes) assumed for a home machine one cannot measure
# (the README's Will-it-fit tables): a batch-1 expert on dual-channel DDR4 reads its weights at about
# this rate. This machine's own is measured (cpu_speed.py).
DEFAULT_CPU_GBPS = 40.0


@dataclass
class HardwareProfile:
    gpu: str | None
    vram_total_bytes: int
    vram_free_bytes: int
    driver: str | None
    ram_total_bytes: int
    ram_available_bytes: int
    cpu_cores: int
    h2d_gbps: float | None = None              # measured pinned host->device bandwidth
    expert_compute_ms: dict | None = None      # "HxI:dtype" -> ms of one expert at batch 1
    cuda: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def bandwidth_gbps(self) -> float:
        """Measured bandwidth, or the documented simulated default."""
        return self.h2d_gbps if self.h2d_gbps else DEFAULT_BANDWIDTH_GBPS

    @property
    def bandwidth_source(self) -> str:
        return "measured" if self.h2d_gbps else f"simulated ({DEFAULT_BANDWIDTH_GBPS:g} GB/s default)"



def cpu_gbps_from_timing(weight_bytes: int, seconds: float) -> float:
    """GB/s of weight bytes (1e9 bytes/s) of a CPU expert computation."""
    if weight_bytes <= 0 or seconds <= 0:
        raise ValueError(f"a CPU timing needs bytes > 0 and seconds > 0, got {weight_bytes}, {seconds}")
    return weight_bytes / seconds / 1e9


def _nvml() -> dict:
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:
        return {}
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(int(os.environ.get("MOEPIC_GPU_INDEX", "0")))
        name = pynvml.nvmlDeviceGetName(h)
        mem = pynvml.nvmlDeviceGetMemoryInfo(h)
        driver = pynvml.nvmlSystemGetDriverVersion()
        decode = lambda v: v.decode() if isinstance(v, bytes) else str(v)  # noqa: E731
        return {"gpu": decode(name), "vram_total_bytes": int(mem.total), "vram_free_bytes": int(mem.free),
                "driver": decode(driver)}
    except Exception:
        return {}
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def _cuda_available() -> bool:
    try:
        import torch
        return bool(torch.cuda.is_available())
    except Exception:
        return False


def measure_h2d_gbps(sizes_mb=(64, 128, 256), repeats: int = 3) -> float:
    """Median GB/s of pinned host->device copies of each size, `repeats` times (after one warm-up)."""
    import torch
    rates = []
    for mb in sizes_mb:
        n = mb * 2**20
        src = torch.empty(n, dtype=torch.uint8, pin_memory=True)
        dst = torch.empty(n, dtype=torch.uint8, device="cuda")
        dst.copy_(src, non_blocking=True)
        torch.cuda.synchronize()
        for _ in range(repeats):
            start = time.perf_counter()
            dst.copy_(src, non_blocking=True)
            torch.cuda.synchronize()
            rates.append(n / (time.perf_counter() - start) / 1e9)
        del src, dst
    torch.cuda.empty_cache()
    return float(statistics.median(rates))


def measure_expert_ms(hidden: int, intermediate: int, dtype: str = "float16", repeats: int = 20) -> float:
    """Median ms of one expert forward at batch 1 on CUDA: down(silu(gate x) * up x)."""
    import torch
    dt = getattr(torch, dtype)
    x = torch.randn(1, hidden, device="cuda", dtype=dt)
    gate_up = torch.randn(2 * intermediate, hidden, device="cuda", dtype=dt) * 0.01
    down = torch.randn(hidden, intermediate, device="cuda", dtype=dt) * 0.01
    times = []
    for i in range(repeats + 3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        g, u = (x @ gate_up.T).chunk(2, dim=-1)
        (torch.nn.functional.silu(g) * u) @ down.T
        torch.cuda.synchronize()
        if i >= 3:
            times.append((time.perf_counter() - start) * 1e3)
    del gate_up, down
    torch.cuda.empty_cache()
    return float(statistics.median(times))


def detect(measure: bool = False, expert_shapes=((4096, 14336),), dtype: str = "float16") -> HardwareProfile:
    """The machine as it is now. `measure` (CUDA only) adds bandwidth and expert compute times."""
    import psutil
    vm = psutil.virtual_memory()
    info = _nvml()
    cuda = _cuda_available()
    prof = HardwareProfile(gpu=info.get("gpu"), vram_total_bytes=info.get("vram_total_bytes", 0),
                           vram_free_bytes=info.get("vram_free_bytes", 0), driver=info.get("driver"),
                           ram_total_bytes=int(vm.total), ram_available_bytes=int(vm.available),
                           cpu_cores=psutil.cpu_count(logical=False) or os.cpu_count() or 1, cuda=cuda)
    if cuda and prof.gpu is None:
        import torch
        free, total = torch.cuda.mem_get_info()
        prof.gpu, prof.vram_total_bytes, prof.vram_free_bytes = torch.cuda.get_device_name(0), int(total), int(free)
    if cuda and measure:
        prof.h2d_gbps = measure_h2d_gbps()
        prof.expert_compute_ms = {f"{h}x{i}:{dtype}": measure_expert_ms(h, i, dtype) for h, i in expert_shapes}
    return prof


if __name__ == "__main__":
    import json
    import sys
    print(json.dumps(detect(measure="--measure" in sys.argv).to_dict(), indent=2))
