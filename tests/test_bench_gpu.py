"""bench/gpu.py's CPU path runs, so that the GPU script is not dead code where no GPU is lent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_gpu_script_runs_on_the_host_and_sees_demotions_promotions_and_memory_back(
    tmp_path: Path,
) -> None:
    out = tmp_path / "gpu.json"
    script = str(ROOT / "bench" / "gpu.py")
    args = ["--device", "host", "--quick", "--cycles", "3", "--json", str(out)]
    done = subprocess.run(
        [sys.executable, script, *args],
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-4000:]  # the bench's traceback, when it fails
    (result,) = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["memory_source"] == "host"
    past = result["past_memory"]
    assert past["demotions"] > 0 and past["promotions"] > 0
    assert past["loads_over_device_total"] == 0
    assert result["promotion_vs_reload"]["promotion_s"] > 0
    assert {c["runtime"] for c in result["cycles"]} == {"onnx", "xgboost", "torch"}
    assert result["recycled"] == []


def test_the_gpu_script_refuses_at_once_without_a_gpu() -> None:
    """The prepared command (scripts/gpu_check.sh runs it) says why it cannot run on a machine
    with no NVIDIA device, before it warms or builds anything."""
    from mesh.pod.devices import NvmlMemory

    if NvmlMemory.available(0) is None:
        pytest.skip("an NVIDIA device is present: scripts/gpu_check.sh runs the real thing")
    script = str(ROOT / "bench" / "gpu.py")
    done = subprocess.run(
        [sys.executable, script, "--device", "cuda", "--runtimes", "onnx"],
        timeout=120,
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "--device cuda: no NVIDIA device" in done.stderr
