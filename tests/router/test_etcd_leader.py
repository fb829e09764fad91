"""A three-member etcd cluster loses its leader under load: no request fails, misses work again
as soon as a new leader is elected, with no manual step."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import numpy as np
import pytest
from aetcd import rpc

from mesh.gen import management_pb2 as mpb
from mesh.pod.artifacts import DirectoryArtifacts
from tests.helpers import free_port, infer_request, running_pod, running_router, wait_until
from tests.router.test_faults import Load


class EtcdCluster:
    """Three etcd members on loopback."""

    def __init__(self, root: Path) -> None:
        binary = shutil.which("etcd")
        assert binary is not None, "no etcd on PATH: install Debian's etcd-server"
        self.members = [(f"m{i}", free_port(), free_port()) for i in range(3)]
        initial = ",".join(f"{n}=http://127.0.0.1:{peer}" for n, _, peer in self.members)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        for name, client, peer in self.members:
            self.procs[name] = subprocess.Popen(
                [binary, "--name", name, "--data-dir", str(root / name),
                 "--listen-client-urls", f"http://127.0.0.1:{client}",
                 "--advertise-client-urls", f"http://127.0.0.1:{client}",
                 "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-cluster", initial, "--initial-cluster-state", "new",
                 "--heartbeat-interval", "100", "--election-timeout", "1000",
                 "--log-level", "error"],
                stdout=subprocess.DEVNULL, stderr=(root / f"{name}.log").open("wb"),
            )  # fmt: skip
        self.url = ",".join(f"http://127.0.0.1:{c}" for _, c, _ in self.members)
        wait_until(lambda: self.leader() is not None, timeout=30, what="an etcd leader")

    def _status(self, client: int) -> rpc.StatusResponse | None:
        with grpc.insecure_channel(f"127.0.0.1:{client}") as channel:
            stub = channel.unary_unary(
                "/etcdserverpb.Maintenance/Status",
                request_serializer=rpc.StatusRequest.SerializeToString,
                response_deserializer=rpc.StatusResponse.FromString,
            )
            try:
                return stub(rpc.StatusRequest(), timeout=1)  # type: ignore[no-any-return]
            except grpc.RpcError:
                return None

    def leader(self) -> str | None:
        for name, client, _ in self.members:
            if self.procs[name].poll() is not None:
                continue
            status = self._status(client)
            if status is not None and status.leader and status.leader == status.header.member_id:
                return name
        return None

    def kill(self, name: str) -> None:
        self.procs[name].kill()
        self.procs[name].wait(10)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    c = EtcdCluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


@pytest.mark.slow
def test_etcd_losing_its_leader_fails_no_request(cluster: EtcdCluster, model_dir: Path) -> None:
    prefix = "/leader-loss/"
    with ExitStack() as stack:
        for i in range(2):
            stack.enter_context(
                running_pod(
                    artifacts=DirectoryArtifacts(model_dir), etcd=cluster.url,
                    etcd_prefix=prefix, pod_id=f"pod-{i}", lease_ttl=3,
                )
            )  # fmt: skip
        router = stack.enter_context(
            running_router(etcd=cluster.url, etcd_prefix=prefix, lease_ttl=3, leader_interval=0.3)
        )
        register = router.management.RegisterModel
        register(mpb.RegisterModelRequest(model_id="xgb", format="xgboost", storage_path="xgb",
                                          options=mpb.ModelOptions(min_copies=2)))  # fmt: skip
        register(mpb.RegisterModelRequest(model_id="later", format="xgboost", storage_path="xgb"))
        mirror = router.server.mirror
        wait_until(lambda: len(mirror.placements.get("xgb", {})) == 2, what="two copies")
        x = {"input__0": np.ones((1, 64), np.float32)}
        with Load(router, {"xgb": x}) as load:
            wait_until(lambda: load.ok["xgb"] > 20, what="traffic")
            leader = cluster.leader()
            assert leader is not None
            cluster.kill(leader)
            wait_until(lambda: cluster.leader() not in (None, leader), what="a new leader")
            before = load.ok["xgb"]
            # A miss needs etcd (the load claim): it works once a new leader is elected.
            router.v2.ModelInfer(infer_request("later", **x), timeout=30)
            wait_until(lambda: load.ok["xgb"] > before + 50, what="traffic after")
        assert load.failed["xgb"] == []
