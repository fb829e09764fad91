"""A puller killed mid-download: the pod's load fails with a defined status and the pod lives
on; the puller started again on the same cache finishes the model with no manual step and
never serves the partial file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from mesh.gen import runtime_pb2 as rpb
from tests.helpers import running_pod, wait_until
from tests.puller.servers import FaultServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def slow_store(tmp_path: Path) -> Iterator[tuple[FaultServer, threading.Event, list[str]]]:
    """An ONNX model of about a MiB behind HTTP, served in 64 KiB ranges; the third range
    waits on an event, so a download stops midway until the test lets it go."""
    from mesh import examples

    examples.onnx_mlp(tmp_path / "big", sizes=(64, 512, 512, 10))
    server = FaultServer().start()
    file = next(p for p in sorted((tmp_path / "big").iterdir()) if p.name != "mesh.json")
    name, data = file.name, file.read_bytes()
    server.put(f"/models/{name}", data)
    release = threading.Event()
    gets: list[str] = []

    def before_get(path: str) -> None:
        gets.append(path)
        if len(gets) == 3:
            release.wait(60)

    server.state.before_get = before_get
    try:
        yield server, release, [name, str(len(data))]
    finally:
        release.set()
        server.stop()


def _puller(socket_path: str, tmp_path: Path, config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "mesh", "puller", "--listen", f"unix:{socket_path}",
         "--no-metrics", "--cache-dir", str(tmp_path / "cache"), "--cache-bytes", "1Gi",
         "--storage-config", str(config), "--range-size", "65536", "--log-level", "WARNING"],
        cwd=ROOT, stderr=(tmp_path / "puller.log").open("ab"),
    )  # fmt: skip


@pytest.mark.slow
def test_a_puller_killed_mid_download(
    tmp_path: Path, slow_store: tuple[FaultServer, threading.Event, list[str]]
) -> None:
    server, release, (name, size) = slow_store
    gets = server.state.seen
    if int(size) < 4 * 65536:
        pytest.fail(f"the test model is too small ({size} bytes) to stop mid-download")
    config = tmp_path / "storage.json"
    config.write_text(json.dumps({"default": {"type": "http", "url": f"{server.url}/models"}}))
    sock = str(tmp_path / "puller.sock")
    puller = _puller(sock, tmp_path, config)
    try:
        wait_until(lambda: os.path.exists(sock), timeout=60, what="the puller's socket")
        with running_pod(puller=f"unix:{sock}", runtimes=None) as pod:
            request = rpb.LoadModelRequest(model_id="big", format="onnx", storage_path=name)
            outcome: list[grpc.StatusCode] = []

            def load() -> None:
                try:
                    pod.control.LoadModel(request, timeout=60)
                    outcome.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    outcome.append(exc.code())

            loader = threading.Thread(target=load)
            loader.start()
            wait_until(lambda: len(gets) >= 3, what="the download midway")
            puller.kill()
            puller.wait(10)
            loader.join(60)
            assert outcome and outcome[0] in (
                grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION
            ), outcome  # fmt: skip
            release.set()
            puller = _puller(sock, tmp_path, config)  # again, on the same cache
            wait_until(lambda: _loads(pod, request), timeout=60, what="a load after restart")
    finally:
        release.set()
        puller.kill()
        puller.wait(10)


def _loads(pod, request) -> bool:  # type: ignore[no-untyped-def]
    try:
        response = pod.control.LoadModel(request, timeout=30)
    except grpc.RpcError:
        time.sleep(0.2)
        return False
    return bool(response.size_bytes)
