"""The contract of a pod's artifact source (mesh.pod.dataplane.ArtifactSource), run on the
FakePuller and CountingPuller the pod tests use and on the real puller (server and client over its unix socket,
a `file` storage entry): the fake must answer the way the pod relies on the puller to answer.

What the pod relies on: a pull returns a local path holding the stored bytes (a file or a
directory); pulling again gives the same bytes; a path the storage does not have raises
ArtifactNotFound (NOT_FOUND to the pod's caller), not a path to nothing; release is accepted
after a pull and for a model that holds nothing.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from mesh.errors import ArtifactNotFound
from mesh.storageref import StorageRef
from tests.fakes import CountingPuller, FakePuller

KEY = "models"

Source = Callable[[Path], Awaitable[Any]]


@pytest.fixture(params=["fake", "counting", "puller"])
def make_source(
    request: pytest.FixtureRequest, serve_puller: Callable[..., Any], tmp_path: Path
) -> Source:
    async def make(storage: Path) -> Any:
        if request.param == "fake":
            return FakePuller(storage)
        if request.param == "counting":
            return CountingPuller(storage, tmp_path / "counting-cache")
        served = await serve_puller({KEY: {"type": "file", "root": str(storage)}})
        return served.client

    return make


def content(path: str | Path) -> bytes:
    return Path(path).read_bytes()


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    root = tmp_path / "storage"
    (root / "mlp").mkdir(parents=True)
    (root / "mlp" / "model.onnx").write_bytes(os.urandom(50_000))
    (root / "single.ubj").write_bytes(os.urandom(20_000))
    return root


async def test_a_pull_gives_a_local_copy_of_the_stored_bytes(
    make_source: Source, storage: Path
) -> None:
    source = await make_source(storage)
    single = await source.pull("a", StorageRef(KEY, "single.ubj"))
    assert content(single) == content(storage / "single.ubj")
    tree = await source.pull("b", StorageRef(KEY, "mlp"))
    assert content(Path(tree) / "model.onnx") == content(storage / "mlp" / "model.onnx")
    again = await source.pull("a", StorageRef(KEY, "single.ubj"))
    assert content(again) == content(single)


async def test_a_path_the_storage_does_not_have_is_not_found(
    make_source: Source, storage: Path
) -> None:
    source = await make_source(storage)
    with pytest.raises(ArtifactNotFound):
        await source.pull("m", StorageRef(KEY, "missing.onnx"))


async def test_release_after_a_pull_and_of_nothing_is_accepted(
    make_source: Source, storage: Path
) -> None:
    source = await make_source(storage)
    await source.pull("a", StorageRef(KEY, "single.ubj"))
    await source.release("a")
    await source.release("never-pulled")
    # Released is not gone from storage: the next pull works.
    assert content(await source.pull("a", StorageRef(KEY, "single.ubj")))
