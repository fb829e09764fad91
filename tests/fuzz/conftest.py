"""A pod and a router over a real etcd, with three models loaded, for the fuzz tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.gen import management_pb2 as mpb
from mesh.pod.artifacts import DirectoryArtifacts
from tests.cluster.conftest import etcd  # noqa: F401  (shared fixtures)
from tests.cluster.etcd_server import EtcdServer
from tests.helpers import RunningPod, RunningRouter, running_pod, running_router

MODELS = {"mlp": ("onnx", "mlp"), "identity": ("onnx", "identity"), "xgb": ("xgboost", "xgb")}


@pytest.fixture(scope="module")
def mesh(
    etcd: EtcdServer,  # noqa: F811
    model_dir: Path,
) -> Iterator[tuple[RunningPod, RunningRouter]]:
    prefix = "/fuzz/"
    with (
        running_pod(
            artifacts=DirectoryArtifacts(model_dir), etcd=etcd.url, etcd_prefix=prefix,
            pod_id="fuzz-pod", lease_ttl=5, rest_port=0,
        ) as pod,
        running_router(etcd=etcd.url, etcd_prefix=prefix) as router,
    ):  # fmt: skip
        for model, (fmt, path) in MODELS.items():
            router.management.RegisterModel(
                mpb.RegisterModelRequest(
                    model_id=model, format=fmt, storage_path=path, load_now=True
                )
            )
        yield pod, router
