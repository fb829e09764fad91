"""`mesh up` with an elastic pool, as a user runs it: from zero pods a request is held and
answered, the pool goes back to zero when idle, and a second cold start is answered too; a pod
that recycles itself (exit status 75) is replaced by the pool controller (real processes)."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton

from mesh import examples
from mesh.placement.pool import PoolPolicy
from mesh.pool.controller import PoolController, PoolMetrics
from mesh.pool.local import LocalPods, LocalPodSpec
from tests.cluster.conftest import etcd, prefix  # noqa: F401  (shared fixtures)
from tests.cluster.etcd_server import EtcdServer
from tests.helpers import free_port, wait_until


def _metrics(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


def _mesh(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh", *argv], capture_output=True, text=True, timeout=60
    )


@pytest.mark.slow
def test_a_pool_from_zero_answers_a_held_request_goes_back_to_zero_and_starts_again(
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    examples.xgboost_booster(models / "fraud" / "v3", n_trees=5)
    port = free_port()
    up = subprocess.Popen(
        [sys.executable, "-m", "mesh", "up", "--storage", str(models), "--port", str(port),
         "--rest-port", str(free_port()), "--min-pods", "0", "--max-pods", "2",
         "--scale-down-after", "2", "--pool-window", "2", "--pool-interval", "0.5"],
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
        assert "pod-" not in text  # from zero: no pod started
        (pool_url,) = re.findall(r"pool .* metrics (http://\S+)", text)
        (router_url,) = re.findall(r"router +gRPC \S+ +metrics (http://\S+)", text)
        pods = 'mesh_pool_pods{pool="default"}'
        cold = "mesh_router_cold_start_seconds_count"
        started = 'mesh_pool_scale_events_total{direction="up",pool="default"}'
        down = 'mesh_pool_scale_events_total{direction="down",pool="default"}'
        assert _metrics(pool_url)[pods] == 0
        done = _mesh("register", "fraud", "--format", "xgboost", "--storage-path", "fraud/v3",
                     "--router", f"127.0.0.1:{port}")  # fmt: skip
        assert done.returncode == 0, done.stderr
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        x = triton.InferInput("input__0", [1, 64], "FP32")
        x.set_data_from_numpy(np.zeros((1, 64), np.float32))
        for start in (1, 2):
            # Held while a pod starts, registers and loads the model; then answered.
            result = client.infer("fraud", [x], client_timeout=240)
            assert result.as_numpy("output__0").shape == (1,)
            assert _metrics(router_url)[cold] == start
            # The pod that answered was started for it by the pool controller.
            assert _metrics(pool_url)[started] == start
            # Idle: the pool drains its pod and is back at zero.
            wait_until(lambda n=start: _metrics(pool_url).get(down) == n, timeout=120, what="drain")
            wait_until(lambda: _metrics(pool_url)[pods] == 0, timeout=60, what="zero pods")
            wait_until(
                lambda: _metrics(pool_url)['mesh_pool_desired_pods{pool="default"}'] == 0,
                timeout=30,
            )
        exits = [k for k in _metrics(pool_url) if k.startswith("mesh_pool_pod_exits_total")]
        assert exits == []  # each pod left drained by the pool, none crashed
    finally:
        up.send_signal(signal.SIGINT)
        _out, err = up.communicate(timeout=120)
    assert up.returncode == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]


_FAKE_MESH = textwrap.dedent(
    """
    import sys, time
    # A stand-in for `mesh`: `pod` recycles itself (exit status 75) soon after it starts,
    # `puller` waits to be stopped.
    if sys.argv[1] == "pod":
        time.sleep(0.5)
        sys.exit(75)
    time.sleep(600)
    """
)


async def test_a_pod_that_recycles_itself_is_replaced_by_the_pool(
    etcd: EtcdServer,  # noqa: F811
    prefix: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    from prometheus_client import CollectorRegistry

    from mesh.cluster.etcd import EtcdConfig, EtcdStore

    fake = tmp_path / "fake_mesh.py"
    fake.write_text(_FAKE_MESH)
    (tmp_path / "storage.json").write_text("{}")
    pods = LocalPods(
        LocalPodSpec(
            mesh=[sys.executable, str(fake)],
            etcd=etcd.url,
            prefix=prefix,
            host="127.0.0.1",
            capacity="1Gi",
            cache_bytes=2**30,
            storage_config=tmp_path / "storage.json",
            workdir=tmp_path,
        )
    )
    registry = CollectorRegistry()
    store = EtcdStore(EtcdConfig.parse(etcd.url))
    controller = PoolController(
        store, prefix, PoolPolicy(min_pods=1, max_pods=2), pods, metrics=PoolMetrics(registry)
    )
    await controller.mirror.start()
    try:
        await controller.step()
        assert pods.running() == {"pod-0"}
        deadline = time.monotonic() + 30
        while "pod-1" not in _started(pods):  # the controller's own interval, shortened
            assert time.monotonic() < deadline, "pod-0 was not replaced"
            await asyncio.sleep(0.1)
            await controller.step()
        assert "pod-0" not in _started(pods)
        exits = registry.get_sample_value(
            "mesh_pool_pod_exits_total", {"pool": "default", "reason": "recycled"}
        )
        assert exits is not None and exits >= 1
    finally:
        pods.close()
        for _, child in pods.children():
            child.kill()
            child.wait()
        await controller.aclose()
        await store.aclose()


def _started(pods: LocalPods) -> set[str]:
    return {p.pod_id for p in pods.pods()}
