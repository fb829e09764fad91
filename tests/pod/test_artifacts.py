"""LoadModel from storage: the pod asks its puller, and gives artifacts back when models go."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.errors import InvalidRequest, ModelLoadFailed
from mesh.pod.cache import ModelCache
from mesh.pod.dataplane import DataPlane
from mesh.runtimes.registry import RuntimeRegistry
from tests.fakes import FakePuller, FakeRuntime
from tests.helpers import wait_until_async


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
    await dp.load("a", "", options=opts, storage_key="s3", storage_path="a.fake")
    again = await dp.load("a", "", options=opts, storage_key="s3", storage_path="a.fake")
    assert again.already_loaded
    assert puller.pulls == [("a", "s3", "a.fake")]  # loaded already: nothing pulled again
    await dp.load("b", "", options=opts, storage_path="b.fake")
    await dp.load("c", "", options=opts, storage_path="c.fake")  # evicts "a" (LRU)
    assert "a" in puller.released
    assert await dp.unload("b") is not None
    await wait_until_async(lambda: sorted(puller.released) == ["a", "b"], what="both released")
    await dp.aclose()


async def test_storage_options_go_to_the_puller_and_the_rest_to_the_runtime(
    plane: tuple[DataPlane, FakePuller],
) -> None:
    dp, puller = plane
    opts = {"size": "40000", "storage.bucket": "other-bucket"}
    await dp.load("a", "", options=opts, storage_key="s3", storage_path="a.fake")
    assert puller.options == [{"bucket": "other-bucket"}]
    source = dp.cache.source_of("a")
    assert source is not None
    assert dict(source.options) == {"size": "40000"}  # the runtime sees only its own
    await dp.aclose()


async def test_a_failed_load_from_storage_releases_what_it_pulled(
    plane: tuple[DataPlane, FakePuller],
) -> None:
    dp, puller = plane
    with pytest.raises(ModelLoadFailed):
        await dp.load("x", "", options={"fail": "bad weights"}, storage_path="broken.fake")
    await wait_until_async(lambda: puller.released == ["x"], what="the failed load's release")
    await dp.aclose()


async def test_storage_without_a_puller_is_refused_clearly(tmp_path: Path) -> None:
    runtimes = RuntimeRegistry([FakeRuntime()])
    dp = DataPlane(ModelCache(capacity=10**6, runtimes=runtimes), runtimes)
    with pytest.raises(InvalidRequest, match="no puller"):
        await dp.load("a", "", storage_path="a.fake")
    with pytest.raises(InvalidRequest, match="path or a storage_path"):
        await dp.load("a", "")
    await dp.aclose()
