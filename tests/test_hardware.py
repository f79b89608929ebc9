"""Hardware profile: never crashes without a GPU; CUDA measurements only where CUDA is."""
import json

import pytest

from moepic_core.runtime.hardware import DEFAULT_BANDWIDTH_GBPS, HardwareProfile, cpu_gbps_from_timing, detect


def cuda_available():
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


def test_detect_without_measuring():
    prof = detect()
    d = prof.to_dict()
    json.dumps(d)
    assert d["ram_total_bytes"] > 0 and d["cpu_cores"] >= 1
    if not prof.cuda:
        assert d["h2d_gbps"] is None
        assert prof.bandwidth_gbps == DEFAULT_BANDWIDTH_GBPS and "simulated" in prof.bandwidth_source


def test_cpu_profile_says_so(monkeypatch):
    import moepic_core.runtime.hardware as hw
    monkeypatch.setattr(hw, "_nvml", lambda: {})
    monkeypatch.setattr(hw, "_cuda_available", lambda: False)
    prof = hw.detect(measure=True)
    assert prof.gpu is None and prof.cuda is False and prof.vram_total_bytes == 0
    assert prof.h2d_gbps is None and prof.expert_compute_ms is None


def test_profile_fields():
    assert set(HardwareProfile.__dataclass_fields__) >= {
        "gpu", "vram_total_bytes", "vram_free_bytes", "driver", "ram_total_bytes", "ram_available_bytes",
        "cpu_cores", "h2d_gbps", "expert_compute_ms", "cuda"}


def test_cpu_throughput_from_a_timing():
    # 94 MB of int4 weights computed in 2 ms -> 47 GB/s (what cpu_speed.py reports of its timings)
    assert cpu_gbps_from_timing(94_000_000, 0.002) == pytest.approx(47.0)
    with pytest.raises(ValueError):
        cpu_gbps_from_timing(0, 1.0)


@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU: measures pinned host-to-device copies")
def test_cuda_measurements():
    prof = detect(measure=True, expert_shapes=((1024, 2048),))
    assert prof.gpu and prof.vram_total_bytes > 0
    assert 1.0 < prof.h2d_gbps < 1000.0
    assert all(0 < ms < 1000 for ms in prof.expert_compute_ms.values())
