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
from mesh.gen import puller_pb2 as ppb
from mesh.gen import storage_pb2 as spb
from mesh.storageref import StorageRef, Unpack
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
    local = await served.client.pull("mlp", StorageRef("", "mlp"))  # the pod's ArtifactSource call
    assert (await asyncio.to_thread(Path(local, "model.onnx").stat)).st_size == 20 * KB
    again = await served.client.fetch("mlp-copy", StorageRef("default", "mlp"))
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
    with pytest.raises(error, match=names) as raised:  # the old shape: options by name
        await served.legacy_fetch(model_id, key, path, options)
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
    await served.client.pull("mlp", StorageRef("", "mlp/model.onnx"))
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
            await client.pull("m", StorageRef("", "x"))


async def test_the_old_and_the_new_shape_of_a_pull_name_one_artifact(
    store: dict[str, Any], serve_puller: Callable[..., Any]
) -> None:
    served: Served = await serve_puller(store)
    data = (Path(store["default"]["root"]) / "mlp" / "model.onnx").read_bytes()
    digest = _sha(data).upper()  # any case: the puller checks it in lower case
    new = await served.client.fetch("new", StorageRef("", "mlp/model.onnx", sha256=digest))
    assert not new.cache_hit and new.size == 20 * KB
    old = await served.legacy_fetch("old", "default", "mlp/model.onnx", {"sha256": digest})
    assert old.cache_hit and old.local_path == str(new.local_path)
    prefix = await served.client.fetch("prefix", StorageRef("", "mlp/", unpack=Unpack.FALSE))
    assert not prefix.cache_hit and (prefix.local_path / "model.onnx").exists()


async def test_a_pull_that_names_a_digest_is_never_answered_by_an_unchecked_copy(
    store: dict[str, Any], serve_puller: Callable[..., Any]
) -> None:
    # Another model pulled the same object unchecked; the object then changed in storage (or
    # was never the one this model was built for): a pull naming the digest must not get it.
    served: Served = await serve_puller(store)
    path = Path(store["default"]["root"]) / "mlp" / "model.onnx"
    unchecked = await served.client.fetch("unchecked", StorageRef("", "mlp/model.onnx"))
    wanted = os.urandom(20 * KB)
    path.write_bytes(wanted)
    with pytest.raises(errors.ArtifactCorrupt, match="SHA-256"):  # what the cache holds: no
        await served.client.fetch("other", StorageRef("", "mlp/model.onnx", sha256=_sha(b"x")))
    checked = await served.client.fetch(
        "checked", StorageRef("", "mlp/model.onnx", sha256=_sha(wanted))
    )
    assert not checked.cache_hit
    assert checked.local_path.read_bytes() == wanted
    assert unchecked.local_path.read_bytes() != wanted  # the unchecked copy is still its own
    again = await served.client.fetch(
        "checked-2", StorageRef("", "mlp/model.onnx", sha256=_sha(wanted))
    )
    assert again.cache_hit and again.local_path == checked.local_path


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"storage": spb.StorageRef(path="mlp", bucket="a/b")}, "bucket"),
        ({"storage": spb.StorageRef(path="mlp/model.onnx", sha256="xyz")}, "sha256"),
        ({"storage": spb.StorageRef(path="../../etc/passwd")}, "storage path"),
        ({"storage": spb.StorageRef(path="mlp", unpack=7)}, "unpack"),  # type: ignore[arg-type]
        ({"storage": spb.StorageRef(path="mlp"), "path": "big.bin"}, "disagree"),
        ({"storage": spb.StorageRef(path="mlp"), "options": {"bucket": "b"}}, "beside storage"),
    ],
    ids=["bucket", "sha256", "traversal", "unpack", "two-paths", "options-beside-storage"],
)
async def test_a_bad_storage_message_is_invalid_argument(
    store: dict[str, Any], serve_puller: Callable[..., Any], fields: dict[str, Any], names: str
) -> None:
    served: Served = await serve_puller(store)
    request = ppb.PullRequest(model_id="m", **fields)
    with pytest.raises(errors.InvalidRequest, match=names) as raised:
        await served.client._invoke("Pull", request, ppb.PullResponse)
    cause = raised.value.__cause__
    assert isinstance(cause, grpc.aio.AioRpcError)
    assert cause.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        served.metric("mesh_puller_failures_total", reason="InvalidRequest")
        + served.metric("mesh_puller_failures_total", reason="UnsafePath")
        == 1
    )
    assert (await served.client.status()).used == 0
