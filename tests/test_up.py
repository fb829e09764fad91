"""`mesh up` as a user runs it: every port it opened printed, the README's flow through it, a
port clash in one line, and a quiet Ctrl-C."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton

from mesh import examples
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parent.parent


def _mesh(*argv: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh", *argv], capture_output=True, text=True, timeout=60, **kw
    )  # type: ignore[call-overload]


def test_a_busy_router_port_is_one_line_naming_it_and_no_router_is_claimed(
    tmp_path: Path,
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = _mesh("up", "--storage", str(tmp_path), "--port", str(port))
    assert done.returncode != 0
    assert done.stdout == ""  # no "mesh up: router ..." for a router it did not start
    (line,) = done.stderr.strip().splitlines()
    assert f"127.0.0.1:{port}" in line and "in use" in line and "--port" in line


@pytest.mark.slow
def test_mesh_up_prints_its_ports_serves_a_versioned_model_and_stops_quietly(
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    examples.xgboost_booster(models / "fraud" / "v3", n_trees=5)  # the README's layout
    router_port, rest_port = free_port(), free_port()
    up = subprocess.Popen(
        [sys.executable, "-m", "mesh", "up", "--storage", str(models), "--pods", "2",
         "--capacity", "3Gi", "--port", str(router_port), "--rest-port", str(rest_port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert up.stdout is not None
        printed = []
        for line in up.stdout:
            if line.startswith("Register models"):
                break
            printed.append(line)
        text = "".join(printed)
        assert f"router     gRPC 127.0.0.1:{router_port}" in text, text
        # Every TCP port it printed answers; the pullers' caches are sized from --capacity.
        ports = {int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", text)}
        # The router's gRPC, REST and metrics ports, the pods' and theirs, etcd's two.
        assert len(ports) == 3 + 2 * 2 + 2 and rest_port in ports
        for port in ports:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        for url in re.findall(r"(http://\S+/metrics)", text):
            with urllib.request.urlopen(url, timeout=5) as response:
                assert response.status == 200
        assert text.count("cache 6.0Gi") == 2
        page = f"http://127.0.0.1:{rest_port}/dashboard"
        assert page in text
        with urllib.request.urlopen(page, timeout=5) as response:
            assert response.headers["Content-Type"].startswith("text/html")

        router = ("--router", f"127.0.0.1:{router_port}")
        done = _mesh("register", "fraud-v3", "--format", "xgboost",
                     "--storage-path", "fraud/v3", *router)  # fmt: skip
        assert done.returncode == 0, done.stderr
        done = _mesh("vmodel", "set", "fraud", "--to", "fraud-v3", *router)
        assert done.returncode == 0, done.stderr
        client = triton.InferenceServerClient(f"127.0.0.1:{router_port}")
        x = triton.InferInput("input__0", [1, 64], "FP32")
        x.set_data_from_numpy(np.zeros((1, 64), np.float32))
        assert client.infer("fraud", [x]).as_numpy("output__0").shape[0] == 1
        done = _mesh("status", *router)
        assert done.returncode == 0 and "pod-0" in done.stdout and "fraud-v3" in done.stdout
    finally:
        up.send_signal(signal.SIGINT)
        out, err = up.communicate(timeout=90)
    assert up.returncode == 0, err[-3000:]
    assert "mesh up: stopping" in out
    # Quiet: no warnings from the children as they stop (etcd stops last), no tracebacks.
    noisy = [
        line for line in err.splitlines()
        if re.search(r" (WARNING|ERROR|CRITICAL) ", line) and "mesh.runtimes.registry" not in line
    ]  # fmt: skip
    assert noisy == []
    assert "Traceback" not in err.split("mesh.router.server: router listening")[-1]


@pytest.mark.slow
def test_local_mesh_describes_every_process_it_started(tmp_path: Path) -> None:
    from mesh.up import UpSettings, local_mesh

    settings = UpSettings(storage=tmp_path, pods=1, capacity="1Gi", port=0, rest_port=0)
    with local_mesh(settings) as mesh:
        children = mesh.children()
        assert [c.name for c in children] == ["etcd", "puller-0", "pod-0", "router"]
        for child in children:  # each pid is a running process of this mesh
            assert child.running() and Path(f"/proc/{child.pid}").is_dir()
        assert mesh.pods[0].puller is mesh.pullers[0]
        assert mesh.pullers[0].cache_bytes == 2 * 2**30
        for address in (mesh.router.address, mesh.router.rest, mesh.pods[0].address):
            host, port = address.rsplit(":", 1)
            socket.create_connection((host, int(port)), timeout=5).close()
        for metrics in (mesh.router.metrics, mesh.pods[0].metrics):
            with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5) as response:
                assert response.status == 200
        with urllib.request.urlopen(f"{mesh.etcd.url}/health", timeout=5) as response:
            assert response.status == 200
        # The pod registered itself under the name the description gives it.
        done = _mesh("status", "--router", mesh.router.address, "-o", "json")
        assert done.returncode == 0 and '"pod-0"' in done.stdout, done.stderr
        assert mesh.exited() == []
    assert all(not c.running() for c in children)
