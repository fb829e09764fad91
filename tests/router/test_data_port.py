"""A real pod's data port in a real mesh: advertised in its record, used by the router for
inference (mesh.frames), and gRPC for a pod without one."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from mesh.gen import management_pb2 as mpb
from mesh.pod.artifacts import DirectoryArtifacts
from mesh.router.grpcpods import FramePodClient, PodClient
from tests.cluster.etcd_server import EtcdServer
from tests.helpers import RunningPod, running_pod, running_router


@contextlib.contextmanager
def _mesh(
    etcd: EtcdServer, prefix: str, model_dir: Path, pod: dict[str, Any], router: dict[str, Any]
) -> Iterator[tuple[RunningPod, Any]]:
    """One pod (with `pod`'s settings) and one router (with `router`'s), "mlp" registered."""
    with (
        running_pod(
            artifacts=DirectoryArtifacts(model_dir),
            etcd=etcd.url,
            etcd_prefix=prefix,
            pod_id="pod-0",
            lease_ttl=5,
            **pod,
        ) as running,
        running_router(etcd=etcd.url, etcd_prefix=prefix, **router) as routing,
    ):
        routing.management.RegisterModel(
            mpb.RegisterModelRequest(model_id="mlp", format="onnx", storage_path="mlp")
        )
        yield running, routing


@pytest.mark.parametrize("data_port", [0, None], ids=["data-port", "no-data-port"])
def test_the_router_reaches_a_pod_by_its_data_port_or_by_grpc_without_one(
    etcd: EtcdServer, prefix: str, model_dir: Path, data_port: int | None
) -> None:
    with _mesh(etcd, prefix, model_dir, {"data_port": data_port}, {}) as (pod, router):
        client = triton.InferenceServerClient(router.address)
        x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
        session = ort.InferenceSession(str(model_dir / "mlp" / "model.onnx"))
        inp = triton.InferInput("input", [2, 64], "FP32")
        inp.set_data_from_numpy(x)
        for _ in range(3):
            got = client.infer("mlp", [inp]).as_numpy("output")
            np.testing.assert_array_equal(got, session.run(None, {"input": x})[0])
        # A pod's own INVALID_ARGUMENT reaches the client with its message, either way.
        bad = triton.InferInput("input", [2, 63], "FP32")
        bad.set_data_from_numpy(x[:, :63].copy())
        with pytest.raises(InferenceServerException) as err:
            client.infer("mlp", [bad])
        assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "input" in err.value.message()

        instance = router.server.mirror.instances["pod-0"]
        pod_client = router.server.pool.client("pod-0", instance.address, instance.data_address)
        if data_port is None:
            assert instance.data_address == ""
            assert type(pod_client) is PodClient
        else:
            assert instance.data_address == f"127.0.0.1:{pod.server.data_port}"
            assert isinstance(pod_client, FramePodClient)


def test_with_pod_frames_off_the_router_uses_grpc_to_a_pod_with_a_data_port(
    etcd: EtcdServer, prefix: str, model_dir: Path
) -> None:
    with _mesh(etcd, prefix, model_dir, {}, {"pod_frames": False}) as (_, router):
        client = triton.InferenceServerClient(router.address)
        inp = triton.InferInput("input", [1, 64], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 64), np.float32))
        assert client.infer("mlp", [inp]).as_numpy("output").shape == (1, 10)
        instance = router.server.mirror.instances["pod-0"]
        assert instance.data_address  # advertised, and not used
        pod_client = router.server.pool.client("pod-0", instance.address, instance.data_address)
        assert type(pod_client) is PodClient


def test_a_pod_whose_data_port_cannot_be_reached_keeps_serving_over_grpc(
    etcd: EtcdServer, prefix: str, model_dir: Path
) -> None:
    # A network policy that admits the gRPC port and not the data port, or a data listener
    # gone: the pod is healthy, and its inference must not fail for the transport's sake.
    with _mesh(etcd, prefix, model_dir, {}, {}) as (pod, router):
        client = triton.InferenceServerClient(router.address)
        x = np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)
        expected = ort.InferenceSession(str(model_dir / "mlp" / "model.onnx")).run(
            None, {"input": x}
        )[0]
        inp = triton.InferInput("input", [1, 64], "FP32")
        inp.set_data_from_numpy(x)
        np.testing.assert_array_equal(client.infer("mlp", [inp]).as_numpy("output"), expected)
        instance = router.server.mirror.instances["pod-0"]
        pod_client = router.server.pool.client("pod-0", instance.address, instance.data_address)
        assert isinstance(pod_client, FramePodClient)

        pod.run(pod.server._frames.aclose())  # connections cut, connects refused from now on
        for _ in range(3):
            got = client.infer("mlp", [inp], client_timeout=10).as_numpy("output")
            np.testing.assert_array_equal(got, expected)
        assert pod_client._frames.connect_failed_at is not None  # frames were tried, and failed
