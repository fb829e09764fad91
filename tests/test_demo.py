"""The README's first command: a whole local mesh (etcd, router, pods with pullers) serving the
example models through the router."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_serves_every_example_model_through_the_router(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--once",
         "--port", str(free_port()), "--models", str(tmp_path / "models")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for model in ("mlp", "fraud-xgb", "scripted", "exported"):
        assert f"{model:<10} hit:" in done.stdout
    assert done.stdout.count("capacity 1024 MiB") == 2
    assert "/v2/health/ready 200 b'{\"ready\":true}'" in done.stdout
