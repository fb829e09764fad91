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
    subprocess.run(
        [sys.executable, script, *args],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (result,) = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["memory_source"] == "host"
    past = result["past_memory"]
    assert past["demotions"] > 0 and past["promotions"] > 0
    assert past["loads_over_device_total"] == 0
    assert result["promotion_vs_reload"]["promotion_s"] > 0
    assert {c["runtime"] for c in result["cycles"]} == {"onnx", "xgboost", "torch"}
    assert result["recycled"] == []
