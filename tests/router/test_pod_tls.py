"""TLS between router and pod: a pod with --tls-cert/--tls-key/--tls-ca serves its gRPC port
(inference and the control API) and its data port over mutual TLS; a router with --pod-tls-*
reaches it over both; a client without a certificate, or with one from another CA, gets
nothing from either port. Certificates are made by the test with openssl (tests.certs)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton

from mesh import errors
from mesh.frames import FrameClient
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import grpc_predict_v2_pb2_grpc as pb_grpc
from mesh.gen import management_pb2 as mpb
from mesh.gen import runtime_pb2 as rpb
from mesh.gen import runtime_pb2_grpc
from mesh.pod.artifacts import DirectoryArtifacts
from mesh.router.grpcpods import FramePodClient, PodClient
from mesh.runtimes.registry import RuntimeRegistry
from mesh.settings import ClientTLS
from mesh.tls import ClientCredentials
from tests.certs import make_certs
from tests.cluster.etcd_server import EtcdServer
from tests.helpers import RunningPod, infer_request, running_pod, running_router

LIMIT = 64 * 2**20


def ONNX() -> RuntimeRegistry:
    return RuntimeRegistry.discover(["onnx"])  # the models here are ONNX: no other warm-up


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The mesh's CA, a pod certificate (127.0.0.1, localhost) and a router certificate."""
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another CA and certificates it signed: the same names, not the mesh's."""
    return make_certs(tmp_path_factory.mktemp("other-ca"))


def _pod_tls(certs: Path) -> dict[str, Any]:
    return {
        "tls_cert": certs / "server.crt",
        "tls_key": certs / "server.key",
        "tls_ca": certs / "ca.crt",
    }


def _router_tls(ca: Path, client: Path | None) -> dict[str, Any]:
    """The router's --pod-tls-*: trusting `ca`, with the client certificate in `client`."""
    settings: dict[str, Any] = {"pod_tls_ca": ca / "ca.crt"}
    if client is not None:
        settings |= {"pod_tls_cert": client / "client.crt", "pod_tls_key": client / "client.key"}
    return settings


@pytest.fixture
def tls_pod(model_dir: Path, certs: Path) -> Any:
    """A standalone TLS pod serving `model_dir`: any request that reached it would be answered."""
    with running_pod(models=model_dir, runtimes=ONNX(), rest_port=0, **_pod_tls(certs)) as pod:
        yield pod


def _mlp_input(x: np.ndarray) -> triton.InferInput:
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


@pytest.mark.parametrize("pod_frames", [True, False], ids=["frames", "grpc"])
def test_a_router_with_a_client_certificate_reaches_a_tls_pod_over_both_ports(
    etcd: EtcdServer, prefix: str, model_dir: Path, certs: Path, pod_frames: bool
) -> None:
    with (
        running_pod(
            artifacts=DirectoryArtifacts(model_dir), etcd=etcd.url, etcd_prefix=prefix,
            pod_id="pod-0", lease_ttl=5, runtimes=ONNX(), **_pod_tls(certs),
        ) as pod,
        running_router(
            etcd=etcd.url, etcd_prefix=prefix, pod_frames=pod_frames,
            **_router_tls(certs, certs),
        ) as router,
    ):  # fmt: skip
        router.management.RegisterModel(
            mpb.RegisterModelRequest(model_id="mlp", format="onnx", storage_path="mlp")
        )
        client = triton.InferenceServerClient(router.address)
        x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
        expected = ort.InferenceSession(str(model_dir / "mlp" / "model.onnx")).run(
            None, {"input": x}
        )[0]
        # The miss loads the model over the pod's gRPC control API, then infers.
        for _ in range(3):
            got = client.infer("mlp", [_mlp_input(x)], client_timeout=30).as_numpy("output")
            np.testing.assert_array_equal(got, expected)

        instance = router.server.mirror.instances["pod-0"]
        assert instance.data_address == f"127.0.0.1:{pod.server.data_port}"
        pod_client = router.server.pool.client("pod-0", instance.address, instance.data_address)
        if pod_frames:
            # Inference went over the data port, on a TLS connection, with no fallback to gRPC.
            assert isinstance(pod_client, FramePodClient)
            assert pod_client._frames.connect_failed_at is None
            connection = pod_client._frames._connection
            assert connection is not None and connection.transport is not None
            assert connection.transport.get_extra_info("ssl_object") is not None
        else:
            assert type(pod_client) is PodClient
        # The pod's ports speak nothing but TLS: this mesh's plaintext reaches neither.
        with grpc.insecure_channel(pod.address) as channel, pytest.raises(grpc.RpcError):
            pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=5)


def _client_context(ca: Path, client: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca / "ca.crt"))
    if client is not None:
        context.load_cert_chain(client / "client.crt", client / "client.key")
    return context


def _grpc_credentials(ca: Path, client: Path | None) -> grpc.ChannelCredentials:
    if client is None:
        return grpc.ssl_channel_credentials((ca / "ca.crt").read_bytes())
    return grpc.ssl_channel_credentials(
        (ca / "ca.crt").read_bytes(),
        (client / "client.key").read_bytes(),
        (client / "client.crt").read_bytes(),
    )


def _grpc_answers(pod: RunningPod, channel: grpc.Channel, models: Path) -> list[str]:
    """What the pod's gRPC port answers: inference and a load (each its result or its code)."""
    v2 = pb_grpc.GRPCInferenceServiceStub(channel)
    control = runtime_pb2_grpc.RuntimeStub(channel)
    calls = (
        lambda: v2.ModelInfer(
            infer_request("mlp", input=np.zeros((1, 64), np.float32)), timeout=10
        ),
        lambda: control.LoadModel(
            rpb.LoadModelRequest(model_id="identity", path=str(models / "identity")), timeout=10
        ),
    )
    answers = []
    for call in calls:
        try:
            call()
            answers.append("OK")
        except grpc.RpcError as exc:
            answers.append(exc.code().name)
    return answers


def _frame_answer(pod: RunningPod, context: ssl.SSLContext | None) -> str:
    """What the pod's data port answers one inference: "OK" or the mesh error's class."""

    async def call() -> str:
        client = FrameClient("p", f"127.0.0.1:{pod.server.data_port}", LIMIT, ssl_context=context)
        request = infer_request("mlp", input=np.zeros((1, 64), np.float32))
        try:
            await client.infer(request.SerializeToString(), "mlp", 10.0)
            return "OK"
        except errors.MeshError as exc:
            return type(exc).__name__
        finally:
            await client.aclose()

    return asyncio.run(call())


def _rest_answer(pod: RunningPod, context: ssl.SSLContext | None) -> str:
    """What the pod's REST port answers an inference: "OK", its status, or "refused"."""
    scheme = "https" if context is not None else "http"
    url = f"{scheme}://127.0.0.1:{pod.server.rest_port}/v2/models/mlp/infer"
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}]}
    try:
        answer = httpx.post(url, json=body, verify=context or False, timeout=10)
    except httpx.HTTPError:
        return "refused"
    return "OK" if answer.status_code == 200 else str(answer.status_code)


def test_a_client_without_a_certificate_gets_nothing_from_either_port(
    tls_pod: RunningPod, certs: Path, model_dir: Path
) -> None:
    pod = tls_pod
    assert pod.plane.cache.loaded_ids() == []
    # Trusting the pod's certificate, but presenting none of its own; and plaintext.
    with grpc.secure_channel(pod.address, _grpc_credentials(certs, None)) as channel:
        assert _grpc_answers(pod, channel, model_dir) == ["UNAVAILABLE", "UNAVAILABLE"]
    with grpc.insecure_channel(pod.address) as channel:
        assert _grpc_answers(pod, channel, model_dir) == ["UNAVAILABLE", "UNAVAILABLE"]
    assert _frame_answer(pod, _client_context(certs, None)) == "Unavailable"
    assert _frame_answer(pod, None) == "Unavailable"
    # A standalone pod's REST port takes the same rule.
    assert _rest_answer(pod, _client_context(certs, None)) == "refused"
    assert _rest_answer(pod, None) == "refused"
    # Nothing reached the data plane: no inference loaded mlp, no LoadModel loaded identity.
    assert pod.plane.cache.loaded_ids() == []

    # The same calls with the mesh's client certificate are served.
    with grpc.secure_channel(pod.address, _grpc_credentials(certs, certs)) as channel:
        assert _grpc_answers(pod, channel, model_dir) == ["OK", "OK"]
    assert _frame_answer(pod, _client_context(certs, certs)) == "OK"
    assert _rest_answer(pod, _client_context(certs, certs)) == "OK"
    assert sorted(pod.plane.cache.loaded_ids()) == ["identity", "mlp"]


@pytest.mark.parametrize(
    "case",
    ["client-certificate-of-another-CA", "pod-certificate-of-another-CA", "wrong-server-name"],
)
def test_a_certificate_of_another_ca_or_name_is_refused_on_both_ports(
    tls_pod: RunningPod, certs: Path, other: Path, case: str
) -> None:
    pod = tls_pod
    tls = {
        # The pod does not know the router's CA.
        "client-certificate-of-another-CA": ClientTLS(
            ca=certs / "ca.crt", cert=other / "client.crt", key=other / "client.key"
        ),
        # The router does not know the pod's CA.
        "pod-certificate-of-another-CA": ClientTLS(
            ca=other / "ca.crt", cert=certs / "client.crt", key=certs / "client.key"
        ),
        # The pod's certificate is for 127.0.0.1 and localhost, not for mesh-pod.
        "wrong-server-name": ClientTLS(
            ca=certs / "ca.crt", cert=certs / "client.crt", key=certs / "client.key",
            server_name="mesh-pod",
        ),
    }[case]  # fmt: skip
    answers = _router_transport_answers(pod, tls)
    assert answers == {"grpc": "Unavailable", "frames": "Unavailable"}

    # The same transport with the right certificates, and the name the certificate carries.
    good = ClientTLS(
        ca=certs / "ca.crt", cert=certs / "client.crt", key=certs / "client.key",
        server_name="localhost",
    )  # fmt: skip
    assert _router_transport_answers(pod, good) == {"grpc": "OK", "frames": "OK"}


def _router_transport_answers(pod: RunningPod, tls: ClientTLS) -> dict[str, str]:
    """What the router's pod transport gets with `tls`: ServerLive over the gRPC port, one
    inference over the data port ("OK", or the mesh error)."""
    credentials = ClientCredentials.load(tls, "--pod-tls")
    assert credentials is not None
    data_address = f"127.0.0.1:{pod.server.data_port}"

    async def calls() -> dict[str, str]:
        client = FramePodClient("p", pod.address, LIMIT, data_address, tls=credentials)
        request = infer_request("mlp", input=np.zeros((1, 64), np.float32)).SerializeToString()
        answers = {}
        try:
            for name, call in (
                ("grpc", client.live(10.0)),
                ("frames", client._frames.infer(request, "mlp", 10.0)),
            ):
                try:
                    await call
                    answers[name] = "OK"
                except errors.Unavailable:  # a ConnectFailed, or a connection closed under it
                    answers[name] = "Unavailable"
                except errors.MeshError as exc:
                    answers[name] = f"{type(exc).__name__}: {exc}"
        finally:
            await client.aclose()
        return answers

    return asyncio.run(calls())


def test_a_ca_the_system_trusts_is_not_the_mesh_ca_on_either_side(
    model_dir: Path, certs: Path, other: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # OpenSSL's default trust store is SSL_CERT_FILE: here it holds the other CA, as a public
    # CA would be. A pod given --tls-ca, and a router given --pod-tls-ca, trust that CA alone:
    # both once took the system's CAs as well, on the data and REST ports (not on gRPC).
    monkeypatch.setenv("SSL_CERT_FILE", str(other / "ca.crt"))
    with running_pod(models=model_dir, runtimes=ONNX(), rest_port=0, **_pod_tls(certs)) as pod:
        # A client certificate the system's CA signed is refused by the pod.
        stranger = ClientTLS(
            ca=certs / "ca.crt", cert=other / "client.crt", key=other / "client.key"
        )
        assert _router_transport_answers(pod, stranger) == {
            "grpc": "Unavailable",
            "frames": "Unavailable",
        }
        assert _rest_answer(pod, _client_context(certs, other)) == "refused"
        assert pod.plane.cache.loaded_ids() == []
    # A pod certificate the system's CA signed is refused by the router.
    with running_pod(models=model_dir, runtimes=ONNX(), **_pod_tls(other)) as pod:
        router_side = ClientTLS(
            ca=certs / "ca.crt", cert=other / "client.crt", key=other / "client.key"
        )
        assert _router_transport_answers(pod, router_side) == {
            "grpc": "Unavailable",
            "frames": "Unavailable",
        }
        assert pod.plane.cache.loaded_ids() == []
