"""Byte counts in words: decimal units (1 GB = 1e9 bytes), as the engine's vram_gb and the app use."""
from __future__ import annotations

GB = 1e9  # bytes: the engine's vram_gb and cache_gb, the app's GB and every GB/s are decimal


def fmt_bytes(n: float | None) -> str:
    """'–' for None; else three significant digits at most: '512 B', '1.5 KB', '40.0 MB', '187 GB'."""
    if n is None:
        return "–"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" or abs(n) >= 100 else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
