"""The router's client-facing port with TLS and mutual TLS, and the management API's token."""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc
import httpx
import pytest

from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import grpc_predict_v2_pb2_grpc as pb_grpc
from mesh.gen import management_pb2 as mpb
from mesh.gen import management_pb2_grpc
from tests.certs import make_certs
from tests.cluster.etcd_server import EtcdServer
from tests.helpers import running_router


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl."""
    return make_certs(tmp_path_factory.mktemp("certs"))


def test_mutual_tls_admits_only_clients_with_a_certificate(
    etcd: EtcdServer, prefix: str, certs: Path
) -> None:
    with running_router(
        etcd=etcd.url, etcd_prefix=prefix, tls_cert=certs / "server.crt",
        tls_key=certs / "server.key", tls_ca=certs / "ca.crt",
    ) as router:  # fmt: skip
        target = f"127.0.0.1:{router.server.port}"
        ca = (certs / "ca.crt").read_bytes()
        with_cert = grpc.ssl_channel_credentials(
            ca, (certs / "client.key").read_bytes(), (certs / "client.crt").read_bytes()
        )
        with grpc.secure_channel(target, with_cert) as channel:
            live = pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest())
            assert live.live
        with grpc.secure_channel(target, grpc.ssl_channel_credentials(ca)) as channel:
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(
                    pb.ServerLiveRequest(), timeout=5
                )
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError):
            pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=5)
        # The REST port takes the same certificates and the same rule.
        rest = f"https://127.0.0.1:{router.server.rest_port}/v2/health/live"
        with_client_cert = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        with_client_cert.load_cert_chain(str(certs / "client.crt"), str(certs / "client.key"))
        ok = httpx.get(rest, verify=with_client_cert, timeout=10)
        assert ok.status_code == 200 and ok.json() == {"live": True}
        without = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        with pytest.raises(httpx.HTTPError):  # no client certificate
            httpx.get(rest, verify=without, timeout=10)
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port
            httpx.get(rest.replace("https", "http"), timeout=10)


def test_the_management_api_requires_its_token(etcd: EtcdServer, prefix: str) -> None:
    with running_router(etcd=etcd.url, etcd_prefix=prefix, management_token="s3cret") as router:
        stub = management_pb2_grpc.ManagementStub(router.channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.ListModels(mpb.ListModelsRequest())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            stub.ListModels(mpb.ListModelsRequest(), metadata=(("authorization", "Bearer no"),))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        listed = stub.ListModels(
            mpb.ListModelsRequest(), metadata=(("authorization", "Bearer s3cret"),)
        )
        assert list(listed.models) == []
        # Inference needs no token.
        assert router.v2.ServerLive(pb.ServerLiveRequest()).live
