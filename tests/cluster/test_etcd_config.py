"""etcd reached as users configure it: over TLS with client certificates, and through a list of
endpoints of which some are down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mesh.cluster.etcd import EtcdConfig, EtcdStore
from mesh.errors import StoreUnavailable
from mesh.gen import management_pb2 as mpb
from mesh.pod.artifacts import DirectoryArtifacts
from tests.certs import make_certs
from tests.cluster.etcd_server import EtcdServer
from tests.helpers import free_port, infer_request, output_array, running_pod, running_router


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    certs = make_certs(tmp_path_factory.mktemp("etcd-certs"))
    server = EtcdServer(tmp_path_factory.mktemp("etcd-tls") / "data", certs=certs)
    server.start()
    yield server
    server.stop()


def tls_config(server: EtcdServer, client: bool = True) -> EtcdConfig:
    c = server.certs
    assert c is not None
    return EtcdConfig.parse(
        server.url,
        ca_file=c / "ca.crt",
        cert_file=c / "client.crt" if client else None,
        key_file=c / "client.key" if client else None,
    )


async def test_a_store_over_tls_with_a_client_certificate(tls_etcd: EtcdServer) -> None:
    store = EtcdStore(tls_config(tls_etcd))
    try:
        await store.put("/tls-test/k", b"v")
        entry = await store.get("/tls-test/k")
        assert entry is not None and entry.value == b"v"
    finally:
        await store.aclose()


async def test_without_a_client_certificate_the_store_is_unavailable(
    tls_etcd: EtcdServer,
) -> None:
    store = EtcdStore(tls_config(tls_etcd, client=False))
    try:
        with pytest.raises(StoreUnavailable):
            await store.get("/tls-test/k")
    finally:
        await store.aclose()


async def test_a_dead_endpoint_first_in_the_list_is_failed_over(
    etcd: EtcdServer, prefix: str
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    store = EtcdStore(EtcdConfig.parse(f"{dead},{etcd.url}"))
    try:
        for i in range(5):  # every call lands: none is stuck on the dead endpoint
            await store.put(f"{prefix}k{i}", b"v")
        assert len((await store.range(prefix)).entries) == 5
    finally:
        await store.aclose()


@pytest.mark.slow
def test_a_router_and_a_pod_on_a_tls_etcd_serve_a_model(
    tls_etcd: EtcdServer, model_dir: Path
) -> None:
    c = tls_etcd.certs
    assert c is not None
    tls = {"etcd_ca": c / "ca.crt", "etcd_cert": c / "client.crt", "etcd_key": c / "client.key"}
    common = {"etcd": tls_etcd.url, "etcd_prefix": "/tls-mesh/", **tls}
    with (
        running_pod(artifacts=DirectoryArtifacts(model_dir), pod_id="pod-tls", **common),
        running_router(**common) as router,
    ):
        router.management.RegisterModel(
            mpb.RegisterModelRequest(model_id="mlp", format="onnx", storage_path="mlp")
        )
        response = router.v2.ModelInfer(
            infer_request("mlp", input=np.ones((1, 64), np.float32)), timeout=60
        )
        assert output_array(response, "output").shape == (1, 10)
