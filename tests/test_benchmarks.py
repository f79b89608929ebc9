"""The benchmark scripts run (their CPU modes); they print tables, they assert no speed."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_bench_cpu_mode(tmp_path):
    out = tmp_path / "rows.json"
    r = subprocess.run([sys.executable, "benchmarks/gpu_bench.py", "--cpu", "--tokens", "8", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for label in ("all resident", "25% cache, split 0.5", "25% cache, split 1.0"):
        assert label in r.stdout
    import json

    rows = {row["config"]: row for row in json.loads(out.read_text())["rows"]}
    assert rows["all resident"]["hit_rate"] == 1.0 and rows["all resident"]["mb_per_token"] == 0
    assert rows["25% cache, split 0.5"]["split"] == [0.5] and rows["25% cache, split 1.0"]["split"] == [1.0]
    # the same budget holds twice as many half-experts
    assert rows["25% cache, split 0.5"]["slots"] == [2 * s for s in rows["25% cache, split 1.0"]["slots"]]
    kernels = {row["format"]: row for row in json.loads(out.read_text())["kernels"]}
    assert set(kernels) == {"float32", "int8", "int4"}
    # int4 moves 4.5 bits a weight, int8 8.5, float32 32 (H 256, I 512: 393,216 weights)
    assert [round(kernels[f]["mb"] * 1e6 * 8 / (3 * 256 * 512), 2) for f in ("float32", "int8", "int4")] == [32, 8.5, 4.5]


def test_loading_never_holds_the_model_twice():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import load_memory

    rows = load_memory.main(["--intermediate", "1024"])
    assert len(rows) == 2
    for row in rows:
        assert row["store"] == 4 * 8 * 1024 * 3 * 512 * 4  # 4 layers, 8 experts, I 1024, H 512, float32
        assert row["grown"] <= 1.3 * (row["store"] + row["dense"]), row

def test_kernel_table_has_each_format_side_by_side():
    r = subprocess.run([sys.executable, "benchmarks/kernels.py", "--hidden", "256", "--inter", "512", "--rounds", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()[2:]]
    assert [row[0] for row in rows] == ["bf16", "bf16", "int8", "int4"]
    # every row ends with a positive torch / MoEpic ratio
    assert all(float(row[-1].rstrip("x")) > 0 for row in rows)
