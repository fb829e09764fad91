from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from mesh.controller.controller import Controller, ControllerPolicy
from mesh.controller.kube import EventRecorder, LeaseLock, PoolApi, PredictorApi
from mesh.controller.meshapi import MeshApi
from mesh.controller.metrics import ControllerMetrics
from mesh.controller.pools import Pools, PoolSettings
from tests.cluster.conftest import etcd, prefix  # noqa: F401  (shared fixtures)
from tests.kube.apiserver import FakeKubeAPI
from tests.router.conftest import pods  # noqa: F401  (shared fixtures)

NAMESPACE = "ml"
POLICY = ControllerPolicy(
    resync=1.0, poll=0.2, watch_timeout=30, lease_renew=0.3,
    grpc_endpoint="grpc://mesh-router.ml:8033", http_endpoint="http://mesh-router.ml:8008",
)  # fmt: skip


@pytest.fixture
def kube() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI() as api:
        yield api


def predictor(name: str, model_type: str, path: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "Predictor",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"modelType": {"name": model_type}, "path": path, **spec},
    }


def build_controller(
    kube: FakeKubeAPI,
    mesh: MeshApi | Any,
    identity: str | None = None,
    registry: CollectorRegistry | None = None,
    events: bool = False,
    pools: bool = False,
    **policy: Any,
) -> Controller:
    """A controller on the fake API server; with `identity`, one of replicas on a 2 s Lease."""
    client = kube.client()
    lock = LeaseLock(client, NAMESPACE, "mesh-controller", identity, 2.0) if identity else None
    metrics = ControllerMetrics(registry) if registry is not None else None
    recorder = EventRecorder(client, NAMESPACE, instance=identity or "test") if events else None
    # With `pools`, it runs the ServingRuntimes' Deployments too (the kube needs POOL_RESOURCES).
    runner = (
        Pools(PoolApi(client, NAMESPACE), mesh, PoolSettings(interval=0.3), metrics=metrics)
        if pools
        else None
    )
    return Controller(
        PredictorApi(client, NAMESPACE), mesh, dataclasses.replace(POLICY, **policy), lock,
        metrics, events=recorder, pools=runner,
    )  # fmt: skip
