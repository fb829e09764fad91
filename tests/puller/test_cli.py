"""`mesh puller`: settings from flags, a process that serves and drains on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from mesh.cli import main
from mesh.puller.client import PullerClient
from mesh.puller.settings import PullerSettings
from mesh.storageref import StorageRef


def test_bad_settings_exit_with_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["puller", "--cache-bytes", "lots"]) == 2
    assert "cache_bytes" in capsys.readouterr().err
    assert main(["puller", "--listen", "unix:"]) == 2


def test_environment_variables_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESH_PULLER_CACHE_BYTES", "2Gi")
    monkeypatch.setenv("MESH_PULLER_LISTEN", "unix:/run/mesh/puller.sock")
    s = PullerSettings()
    assert s.cache_bytes == 2 * 2**30
    assert s.grpc_address() == "unix:/run/mesh/puller.sock"
    assert PullerSettings(listen="8086").grpc_address() == "127.0.0.1:8086"
    assert PullerSettings(listen="[::1]:9000").grpc_address() == "[::1]:9000"


@pytest.mark.slow
def test_the_process_serves_pulls_and_stops_on_sigterm(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "model.onnx").write_bytes(b"m" * 5000)
    config = tmp_path / "storage.json"
    config.write_text(json.dumps({"default": {"type": "file", "root": str(store)}}))
    sockets = Path(tempfile.mkdtemp(prefix="mesh-cli-", dir="/tmp"))
    socket = sockets / "puller.sock"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mesh",
            "puller",
            "--listen",
            f"unix:{socket}",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--cache-bytes",
            "1Mi",
            "--storage-config",
            str(config),
            "--no-metrics",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        deadline = time.monotonic() + 30
        while not socket.exists():
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "the puller did not start"
            time.sleep(0.05)

        async def pull() -> str:
            async with PullerClient(f"unix:{socket}", timeout=30) as client:
                return await client.pull("m", StorageRef("", "model.onnx"))

        assert Path(asyncio.run(pull())).read_bytes() == b"m" * 5000
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not socket.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(sockets, ignore_errors=True)
