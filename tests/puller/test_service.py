"""The gRPC service and its client, end to end: every failure reaches the pod as its status."""

from __future__ import annotations

import asyncio
import hashlib
import os
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from mesh import errors
from tests.puller.conftest import Served

KB = 1024


@pytest.fixture
def store(tmp_path: Path) -> dict[str, Any]:
    root = tmp_path / "store"
    (root / "mlp").mkdir(parents=True)
    (root / "mlp" / "model.onnx").write_bytes(os.urandom(20 * KB))
    (root / "big.bin").write_bytes(os.urandom(200 * KB))
    return {"default": {"type": "file", "root": str(root)}}


async def test_pull_status_and_release_over_a_unix_socket(
    store: dict[str, Any], serve_puller: Callable[..., Any]
) -> None:
    served: Served = await serve_puller(store)
    local = await served.client.pull("mlp", "", "mlp")  # the pod's ArtifactSource call
    assert (await asyncio.to_thread(Path(local, "model.onnx").stat)).st_size == 20 * KB
    again = await served.client.fetch("mlp-copy", "default", "mlp")
    assert again.cache_hit and str(again.local_path) == local and again.size == 20 * KB
    status = await served.client.status()
    assert status.used == 20 * KB and status.in_use == 20 * KB
    (artifact,) = status.artifacts
    assert artifact.models == ("mlp", "mlp-copy")
    assert artifact.source.endswith("/store/mlp")
    await served.client.release("mlp")
    assert await served.client.release_held("mlp-copy")
    assert not await served.client.release_held("mlp-copy")
    assert (await served.client.status()).in_use == 0


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("model_id", "key", "path", "options", "status", "error", "names"),
    [
        (
            "m",
            "",
            "../../etc/passwd",
            {},
            "INVALID_ARGUMENT",
            errors.InvalidRequest,
            "storage path",
        ),
        ("../m", "", "mlp", {}, "INVALID_ARGUMENT", errors.InvalidRequest, "model id"),
        ("m", "", "/etc/passwd", {}, "INVALID_ARGUMENT", errors.InvalidRequest, "absolute"),
        ("m", "", "mlp", {"colour": "red"}, "INVALID_ARGUMENT", errors.InvalidRequest, "colour"),
        ("m", "nokey", "mlp", {}, "FAILED_PRECONDITION", errors.StorageConfigError, "'nokey'"),
        ("m", "", "absent.onnx", {}, "NOT_FOUND", errors.ArtifactNotFound, "'default'"),
        ("m", "", "big.bin", {}, "RESOURCE_EXHAUSTED", errors.CacheFull, "big.bin"),
        (
            "m",
            "",
            "mlp/model.onnx",
            {"sha256": _sha(b"other")},
            "DATA_LOSS",
            errors.ArtifactCorrupt,
            "SHA-256",
        ),
    ],
    ids=[
        "path-traversal",
        "id-traversal",
        "absolute",
        "option",
        "storage-key",
        "missing",
        "too-big",
        "checksum",
    ],
)
async def test_each_failure_reaches_the_client_as_its_status(
    store: dict[str, Any],
    serve_puller: Callable[..., Any],
    model_id: str,
    key: str,
    path: str,
    options: dict[str, str],
    status: str,
    error: type[errors.MeshError],
    names: str,
) -> None:
    served: Served = await serve_puller(store, cache_bytes=100 * KB, retries=0)
    with pytest.raises(error, match=names) as raised:
        await served.client.fetch(model_id, key, path, options)
    cause = raised.value.__cause__
    assert isinstance(cause, grpc.aio.AioRpcError)
    assert cause.code() == getattr(grpc.StatusCode, status)
    assert names in cause.details()
    assert (await served.client.status()).used == 0  # nothing was left behind


async def test_a_loopback_port_and_the_metrics_endpoint(
    store: dict[str, Any], serve_puller: Callable[..., Any]
) -> None:
    served: Served = await serve_puller(
        store, listen="127.0.0.1:0", metrics_port=0, metrics_host="127.0.0.1"
    )
    assert served.server.port > 0
    await served.client.pull("mlp", "", "mlp/model.onnx")
    url = f"http://127.0.0.1:{served.server.metrics_port}/metrics"
    text = await asyncio.to_thread(_get, url)
    assert "mesh_puller_cache_misses_total 1.0" in text
    assert f"mesh_puller_cached_bytes {float(20 * KB)}" in text
    assert 'mesh_puller_downloaded_bytes_total{type="file"}' in text


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


async def test_an_unreachable_puller_is_unavailable() -> None:
    from mesh.puller.client import PullerClient

    async with PullerClient("unix:/nonexistent/puller.sock", timeout=5) as client:
        with pytest.raises(errors.Unavailable, match="puller at unix:/nonexistent"):
            await client.pull("m", "", "x")
