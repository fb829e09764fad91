"""The grpc.health.v1 service that Kubernetes' gRPC probes call, on the pod and the router."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import grpc
import pytest

from mesh.gen import health_pb2 as hpb
from mesh.gen import health_pb2_grpc
from tests.cluster.conftest import etcd, prefix  # noqa: F401  (shared fixtures)
from tests.cluster.etcd_server import EtcdServer
from tests.helpers import running_pod, running_router

SERVING = hpb.HealthCheckResponse.SERVING
NOT_SERVING = hpb.HealthCheckResponse.NOT_SERVING


def test_a_pod_is_serving_and_unknown_services_are_not_found(model_dir: Path) -> None:
    with running_pod(models=model_dir) as pod:
        health = health_pb2_grpc.HealthStub(pod.channel)
        assert health.Check(hpb.HealthCheckRequest()).status == SERVING
        with pytest.raises(grpc.RpcError) as err:
            health.Check(hpb.HealthCheckRequest(service="nope"))
        assert err.value.code() is grpc.StatusCode.NOT_FOUND


def test_watch_tells_a_pod_draining_at_once(model_dir: Path) -> None:
    with running_pod(models=model_dir, drain_timeout=2) as pod:
        health = health_pb2_grpc.HealthStub(pod.channel)
        seen: list[int] = []
        first = threading.Event()

        def watch() -> None:
            try:
                for response in health.Watch(hpb.HealthCheckRequest(), timeout=10):
                    seen.append(response.status)
                    first.set()
            except grpc.RpcError:
                pass  # the pod stopped

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        assert first.wait(10)
        closing = asyncio.run_coroutine_threadsafe(pod.server.aclose(), pod.loop)
        watcher.join(15)
        closing.result(15)
        assert seen[:2] == [SERVING, NOT_SERVING]


def test_a_router_is_serving(etcd: EtcdServer, prefix: str) -> None:  # noqa: F811
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        health = health_pb2_grpc.HealthStub(router.channel)
        assert health.Check(hpb.HealthCheckRequest()).status == SERVING
