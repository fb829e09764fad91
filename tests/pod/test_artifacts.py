"""LoadModel from storage: the pod asks its puller, and gives artifacts back when models go."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from mesh.errors import InvalidRequest, ModelLoadFailed
from mesh.gen import runtime_pb2 as rpb
from mesh.gen import storage_pb2 as spb
from mesh.pod.cache import ModelCache
from mesh.pod.dataplane import DataPlane
from mesh.runtimes.registry import RuntimeRegistry
from mesh.storageref import StorageRef, Unpack
from tests.fakes import FakePuller, FakeRuntime
from tests.helpers import running_pod, wait_until_async


@pytest.fixture
def plane(tmp_path: Path) -> tuple[DataPlane, FakePuller]:
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.fake").write_bytes(b"\0" * 40_000)
    (tmp_path / "broken.fake").write_bytes(b"\0" * 10)
    runtime = FakeRuntime()
    runtimes = RuntimeRegistry([runtime])
    cache = ModelCache(capacity=100_000, runtimes=runtimes, meter=runtime.memory.read)
    puller = FakePuller(tmp_path)
    return DataPlane(cache, runtimes, artifacts=puller), puller


async def test_load_from_storage_pulls_once_and_releases_on_unload_and_eviction(
    plane: tuple[DataPlane, FakePuller],
) -> None:
    dp, puller = plane
    opts = {"size": "40000"}
    await dp.load("a", "", options=opts, storage=StorageRef("s3", "a.fake"))
    again = await dp.load("a", "", options=opts, storage=StorageRef("s3", "a.fake"))
    assert again.already_loaded
    assert puller.pulls == [("a", "s3", "a.fake")]  # loaded already: nothing pulled again
    await dp.load("b", "", options=opts, storage=StorageRef(path="b.fake"))
    await dp.load("c", "", options=opts, storage=StorageRef(path="c.fake"))  # evicts "a" (LRU)
    assert "a" in puller.released
    assert await dp.unload("b") is not None
    await wait_until_async(lambda: sorted(puller.released) == ["a", "b"], what="both released")
    await dp.aclose()


async def test_the_storage_ref_goes_to_the_puller_whole_and_the_options_to_the_runtime(
    plane: tuple[DataPlane, FakePuller],
) -> None:
    dp, puller = plane
    ref = StorageRef("s3", "a.fake", bucket="other-bucket", unpack=Unpack.FALSE, sha256="ab" * 32)
    await dp.load("a", "", options={"size": "40000"}, storage=ref)
    assert puller.refs == [ref]
    source = dp.cache.source_of("a")
    assert source is not None
    assert dict(source.options) == {"size": "40000"}  # the runtime sees only its own
    await dp.aclose()


def _grpc_pod(tmp_path: Path) -> tuple[FakePuller, Any]:
    (tmp_path / "a.fake").write_bytes(b"\0" * 1000)
    puller = FakePuller(tmp_path)
    return puller, running_pod(runtimes=RuntimeRegistry([FakeRuntime()]), artifacts=puller)


def test_load_model_carries_its_storage_message_to_the_puller(tmp_path: Path) -> None:
    puller, pod_running = _grpc_pod(tmp_path)
    with pod_running as pod:
        storage = spb.StorageRef(
            key="s3", path="a.fake", bucket="other", unpack=spb.UNPACK_TRUE, sha256="CD" * 32
        )
        pod.control.LoadModel(
            rpb.LoadModelRequest(
                model_id="a", format="fake", storage=storage, options={"size": "2000"}
            )
        )
        assert puller.refs == [
            StorageRef("s3", "a.fake", bucket="other", unpack=Unpack.TRUE, sha256="CD" * 32)
        ]
        assert dict(pod.plane.cache.source_of("a").options) == {"size": "2000"}


def test_load_model_in_the_old_shape_still_reaches_the_puller(tmp_path: Path) -> None:
    """A router from before StorageRef: storage_key, storage_path and storage.* options."""
    puller, pod_running = _grpc_pod(tmp_path)
    with pod_running as pod:
        options = {"size": "2000", "storage.bucket": "other", "storage.unpack": "false"}
        pod.control.LoadModel(
            rpb.LoadModelRequest(
                model_id="a", format="fake", storage_key="s3", storage_path="a.fake",
                options=options,
            )
        )  # fmt: skip
        assert puller.refs == [StorageRef("s3", "a.fake", bucket="other", unpack=Unpack.FALSE)]
        assert dict(pod.plane.cache.source_of("a").options) == {"size": "2000"}


@pytest.mark.parametrize(
    ("request_fields", "message"),
    [
        ({"storage_key": "s3", "storage_path": "a.fake", "options": {"storage.colour": "red"}},
         "unknown pull options"),
        ({"storage_path": "a.fake", "options": {"storage.unpack": "maybe"}}, "give auto, true"),
        ({"storage": spb.StorageRef(path="a.fake"), "storage_path": "b.fake"}, "disagree"),
        ({"storage": spb.StorageRef(path="a.fake"), "options": {"storage.bucket": "b"}},
         "beside storage"),
    ],
    ids=["unknown-option", "bad-unpack", "two-paths", "options-beside-storage"],
)  # fmt: skip
def test_bad_storage_in_load_model_is_invalid_argument(
    tmp_path: Path, request_fields: dict[str, Any], message: str
) -> None:
    puller, pod_running = _grpc_pod(tmp_path)
    with pod_running as pod:
        with pytest.raises(grpc.RpcError) as raised:
            pod.control.LoadModel(rpb.LoadModelRequest(model_id="a", **request_fields))
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert message in raised.value.details()
        assert puller.refs == []


async def test_a_failed_load_from_storage_releases_what_it_pulled(
    plane: tuple[DataPlane, FakePuller],
) -> None:
    dp, puller = plane
    with pytest.raises(ModelLoadFailed):
        await dp.load(
            "x", "", options={"fail": "bad weights"}, storage=StorageRef(path="broken.fake")
        )
    await wait_until_async(lambda: puller.released == ["x"], what="the failed load's release")
    await dp.aclose()


async def test_storage_without_a_puller_is_refused_clearly(tmp_path: Path) -> None:
    runtimes = RuntimeRegistry([FakeRuntime()])
    dp = DataPlane(ModelCache(capacity=10**6, runtimes=runtimes), runtimes)
    with pytest.raises(InvalidRequest, match="no puller"):
        await dp.load("a", "", storage=StorageRef(path="a.fake"))
    with pytest.raises(InvalidRequest, match="path or a storage_path"):
        await dp.load("a", "")
    await dp.aclose()
