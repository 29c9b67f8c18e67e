"""The GPU benchmark's --smoke path runs end to end on the CPU (bench/gpu/bench_gpu.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_bench_smoke_writes_every_figure(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    subprocess.run(
        [str(ROOT / "bench" / "gpu" / "run.sh"), "--smoke"], check=True, env=env, timeout=600
    )
    fig = json.loads(out.read_text())
    assert fig["smoke"] and fig["device"] == "cpu"
    assert fig["features"]["images"] == 32 and fig["features"]["images_per_s"] > 0
    assert fig["features"]["cache_bytes"] > 0 and fig["features"]["ratio_to_peak"] is None
    for mode in ("cached", "online"):
        assert fig[f"qks_{mode}"]["mode"] == mode and fig[f"qks_{mode}"]["images_per_s"] > 0
    assert fig["eval"]["images"] == 600 and 0 <= fig["eval"]["gzsl_mAP"] <= 100


def test_peak_table_matches_device_names():
    sys.path.insert(0, str(ROOT / "bench" / "gpu"))
    from bench_gpu import peak_tflops

    assert peak_tflops("NVIDIA H200") == 989.4
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("Some other GPU") is None
