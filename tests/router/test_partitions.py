"""Network partitions made with network namespaces (root): a pod cut from etcd but not from
the router, the router cut from etcd, a pod cut from the router. Under load, a model with two
live copies fails no request, and the mesh recovers with no manual step."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest

from mesh.gen import management_pb2 as mpb
from mesh.gen import management_pb2_grpc
from tests.helpers import wait_until
from tests.netns import Network
from tests.router.test_faults import Load

ROOT = Path(__file__).resolve().parents[2]
OK, WHY = Network.available() if os.geteuid() == 0 else (False, "not root")


class _Client:
    """What Load needs of a router: its v2 stub."""

    def __init__(self, address: str) -> None:
        from mesh.gen import grpc_predict_v2_pb2_grpc as pb_grpc

        self.channel = grpc.insecure_channel(address)
        self.v2 = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.management = management_pb2_grpc.ManagementStub(self.channel)


class TimedLoad(Load):
    """Load whose failures carry the wall-clock time, to line them up with the logs."""

    def _loop(self, model: str) -> None:
        from tests.helpers import infer_request

        request = infer_request(model, **self.models[model])
        while not self._stop.is_set():
            try:
                self.router.v2.ModelInfer(request, timeout=20)
                self.ok[model] += 1
            except grpc.RpcError as exc:
                stamp = time.strftime("%H:%M:%S")
                self.failed[model].append(f"{stamp} {exc.code().name}: {exc.details()}")
            time.sleep(0.01)


@pytest.fixture
def net() -> Iterator[Network]:
    if not OK:  # say exactly what failed; the suite runs as root where CI runs it
        pytest.fail(f"ip netns is not available here: {WHY}")
    with Network() as network:
        yield network


def _loaded(client: _Client, model: str) -> list[str]:
    status = client.management.GetModelStatus(mpb.GetModelStatusRequest(model_id=model))
    return sorted(c.pod_id for c in status.copies if c.state == "loaded")


def _partition(net: Network, load: Load, client: _Client, names: list[str], a: str, b: str) -> None:
    before = load.ok["xgb"]
    net.cut(a, b)
    cut_at = time.monotonic()
    # Past the lease TTL (3 s): a pod cut from etcd loses its lease there.
    wait_until(lambda: time.monotonic() - cut_at > 7, timeout=20, what="the cut")
    assert load.ok["xgb"] > before, f"no request answered while {a}-{b} was cut"
    net.heal(a, b)
    wait_until(lambda: _loaded(client, "xgb") == names, timeout=60, what="healed")
    after = load.ok["xgb"]
    wait_until(lambda: load.ok["xgb"] > after + 20, what="traffic after the cut")


@contextmanager
def _mesh(net: Network, model_dir: Path, logs: Path, **router_env: str) -> Iterator[_Client]:
    """etcd, pods pod0 and pod1 and a router, each in a namespace of its own, with model xgb
    (two copies) loaded: the router's client."""
    etcd_ip = net.add("etcd")
    ips = {n: net.add(n) for n in NAMES}
    router_ip = net.add("router")
    procs = []
    env = {**os.environ, "MESH_ROUTER_LEASE_TTL": "3", "MESH_ROUTER_LEADER_INTERVAL": "0.3",
           "MESH_ROUTER_VANISHED_POD_GRACE": "8", **router_env}  # fmt: skip
    url = f"http://{etcd_ip}:2379"
    try:
        procs.append(net.popen("etcd", [
            "etcd", "--data-dir", str(logs / "etcd"), "--listen-client-urls", url,
            "--advertise-client-urls", url, "--listen-peer-urls", f"http://{etcd_ip}:2380",
            "--initial-advertise-peer-urls", f"http://{etcd_ip}:2380",
            "--initial-cluster", f"default=http://{etcd_ip}:2380", "--log-level", "error",
        ], stderr=(logs / "etcd.log").open("wb")))  # fmt: skip
        for n in NAMES:
            procs.append(net.popen(n, [
                sys.executable, "-m", "mesh", "pod", "--etcd", url, "--pod-id", n,
                "--host", ips[n], "--port", "8085", "--no-metrics", "--capacity", "1Gi",
                "--lease-ttl", "3", "--storage-dir", str(model_dir), "--runtimes", "xgboost",
            ], cwd=ROOT, stderr=(logs / f"{n}.log").open("wb")))  # fmt: skip
        procs.append(net.popen("router", [
            sys.executable, "-m", "mesh", "router", "--etcd", url, "--host", router_ip,
            "--port", "8033", "--metrics-port", "2112",
        ], cwd=ROOT, env=env, stderr=(logs / "router.log").open("wb")))  # fmt: skip
        client = _Client(f"{router_ip}:8033")
        grpc.channel_ready_future(client.channel).result(90)
        client.management.RegisterModel(
            mpb.RegisterModelRequest(
                model_id="xgb", format="xgboost", storage_path="xgb",
                options=mpb.ModelOptions(min_copies=2),
            ), timeout=30,
        )  # fmt: skip
        wait_until(lambda: _loaded(client, "xgb") == NAMES, timeout=90, what="two copies")
        yield client
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)


NAMES = ["pod0", "pod1"]
X = {"input__0": np.ones((1, 64), np.float32)}


@pytest.mark.slow
def test_partitions_fail_no_request_for_a_model_with_live_copies(
    net: Network, model_dir: Path, tmp_path: Path
) -> None:
    names = NAMES
    with _mesh(net, model_dir, tmp_path) as client:
        # And one whose only copy is pinned to pod0: it lives through pod0's lost lease only
        # if the router keeps using a pod it can reach after its records vanished.
        client.management.RegisterModel(
            mpb.RegisterModelRequest(
                model_id="single", format="xgboost", storage_path="xgb", load_now=True,
                options=mpb.ModelOptions(pinned_pods=["pod0"]),
            ), timeout=30,
        )  # fmt: skip
        wait_until(lambda: _loaded(client, "single") == ["pod0"], what="the pinned copy")
        x = X
        with Load(client, {"xgb": x}) as load:  # type: ignore[arg-type]
            with TimedLoad(client, {"single": x}) as pinned:  # type: ignore[arg-type]
                _partition(net, load, client, names, "pod0", "etcd")
                _partition(net, load, client, names, "router", "etcd")
            _partition(net, load, client, names, "router", "pod0")
        assert load.failed["xgb"] == [], load.failed["xgb"][:5]
        assert pinned.failed["single"] == [], pinned.failed["single"][:5]
        assert pinned.ok["single"] > 100


@pytest.mark.slow
def test_a_blackholed_pod_fails_no_request_for_a_model_with_a_copy_elsewhere(
    net: Network, model_dir: Path, tmp_path: Path
) -> None:
    # pod0 keeps its lease (etcd hears it) but nothing it sends the router arrives: no answer,
    # no error, no TCP ack. Forwards to it would hang until the client's 20 s deadline (and
    # gRPC's keepalive gives up on the connection only after 40 s); the router's attempt
    # timeout probes pod0, finds it silent and retries the request on pod1.
    with _mesh(
        net, model_dir, tmp_path,
        MESH_ROUTER_ATTEMPT_TIMEOUT="1", MESH_ROUTER_PROBE_TIMEOUT="0.5",
    ) as client:  # fmt: skip
        with TimedLoad(client, {"xgb": X}) as load:  # type: ignore[arg-type]
            wait_until(lambda: load.ok["xgb"] > 50, what="traffic before the blackhole")
            net.blackhole("pod0", "router")
            cut_at = time.monotonic()
            before = load.ok["xgb"]
            # Longer than a client's deadline: a request stuck on pod0 would have failed.
            wait_until(lambda: time.monotonic() - cut_at > 25, timeout=40, what="the blackhole")
            assert load.ok["xgb"] > before + 50, "requests stopped while pod0 was blackholed"
            net.unblackhole("pod0", "router")
            after = load.ok["xgb"]
            wait_until(lambda: load.ok["xgb"] > after + 50, what="traffic after the blackhole")
        assert load.failed["xgb"] == [], load.failed["xgb"][:5]
        assert _loaded(client, "xgb") == NAMES  # pod0 kept its copy and its place
