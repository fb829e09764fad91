"""The disk cache: within budget, least recently used out first, held artifacts never out,
atomic placement, and a restart that remembers what models hold."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

import pytest

from mesh.errors import CacheFull, StorageUnavailable
from mesh.puller.fetcher import ObjectInfo
from mesh.storageref import StorageRef
from tests.puller.conftest import Rig, tree_bytes

KB = 1024


def files(tmp_path: Path, sizes: dict[str, int]) -> dict[str, Any]:
    root = tmp_path / "store"
    root.mkdir(exist_ok=True)
    for name, size in sizes.items():
        (root / name).write_bytes(os.urandom(size))
    return {"local": {"type": "file", "root": str(root)}}


async def test_unused_artifacts_go_least_recently_used_first(
    tmp_path: Path, make_rig: Callable[..., Rig]
) -> None:
    rig = make_rig(files(tmp_path, {n: 100 * KB for n in "abcd"}), cache_bytes=300 * KB)
    puller = rig.puller
    paths = {n: (await puller.pull(f"m-{n}", StorageRef("local", n))).local_path for n in "abc"}
    for n in "abc":
        assert await puller.release(f"m-{n}")
    assert (
        await puller.pull("m-a2", StorageRef("local", "a"))
    ).cache_hit  # a is now the most recent
    d = await puller.pull("m-d", StorageRef("local", "d"))
    assert not paths["b"].exists()  # b: least recently used, and no model holds it
    assert paths["a"].exists() and paths["c"].exists() and d.local_path.exists()
    assert rig.metric("mesh_puller_evictions_total") == 1
    assert puller.status().used == 300 * KB


async def test_an_artifact_in_use_is_never_evicted(
    tmp_path: Path, make_rig: Callable[..., Rig]
) -> None:
    rig = make_rig(files(tmp_path, {n: 100 * KB for n in "abc"}), cache_bytes=250 * KB)
    puller = rig.puller
    a = await puller.pull("m-a", StorageRef("local", "a"))
    b = await puller.pull("m-b", StorageRef("local", "b"))
    with pytest.raises(CacheFull, match="held by models"):
        await puller.pull("m-c", StorageRef("local", "c"))
    assert a.local_path.exists() and b.local_path.exists()
    await puller.release("m-a")
    await puller.pull("m-c", StorageRef("local", "c"))
    assert not a.local_path.exists()
    assert b.local_path.exists()
    assert rig.metric("mesh_puller_failures_total", reason="CacheFull") == 1


async def test_an_artifact_larger_than_the_cache_is_refused_and_leaves_nothing(
    tmp_path: Path, make_rig: Callable[..., Rig]
) -> None:
    rig = make_rig(files(tmp_path, {"big": 200 * KB}), cache_bytes=100 * KB)
    with pytest.raises(CacheFull, match="more than the whole cache"):
        await rig.puller.pull("m", StorageRef("local", "big"))
    assert tree_bytes(rig.settings.cache_dir) == 0


async def test_two_model_ids_share_one_artifact_until_both_release(
    tmp_path: Path, make_rig: Callable[..., Rig]
) -> None:
    rig = make_rig(files(tmp_path, {"a": 100 * KB, "b": 100 * KB}), cache_bytes=150 * KB)
    puller = rig.puller
    first = await puller.pull("one", StorageRef("local", "a"))
    second = await puller.pull("two", StorageRef("local", "a"))
    assert second.cache_hit and second.local_path == first.local_path
    await puller.pull("one", StorageRef("local", "a"))  # the same model again: still one reference
    await puller.release("one")
    with pytest.raises(CacheFull):  # "two" still holds it
        await puller.pull("three", StorageRef("local", "b"))
    await puller.release("two")
    await puller.pull("three", StorageRef("local", "b"))
    assert not first.local_path.exists()
    assert not await puller.release("two")  # already released: nothing held


async def test_the_cache_stays_within_its_budget_under_churn(
    tmp_path: Path, make_rig: Callable[..., Rig]
) -> None:
    rng = random.Random(7)
    sizes = {f"obj{i}": rng.randrange(40, 300) * KB for i in range(40)}
    budget = 1024 * KB
    rig = make_rig(files(tmp_path, sizes), cache_bytes=budget, range_size=64 * KB)
    puller = rig.puller
    cache_dir = rig.settings.cache_dir
    peak = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not done.is_set():
            # On the loop, so that no rename (all made on the loop) lands mid-walk.
            peak = max(peak, tree_bytes(cache_dir))
            await asyncio.sleep(0.002)

    async def model(worker: int) -> int:
        pulled = 0
        for step in range(25):
            name = rng.choice(list(sizes))
            model_id = f"w{worker}-{step}"
            try:
                result = await puller.pull(model_id, StorageRef("local", name))
            except CacheFull:
                continue  # every byte held by the other workers right now: allowed to fail
            assert result.local_path.stat().st_size == sizes[name]
            pulled += 1
            await asyncio.sleep(rng.random() / 500)
            await puller.release(model_id)
        return pulled

    watcher = asyncio.create_task(watch())
    pulled = await asyncio.gather(*(model(w) for w in range(4)))
    done.set()
    await watcher
    assert sum(pulled) > 50
    assert rig.metric("mesh_puller_evictions_total") > 10
    assert peak <= budget, f"the cache held {peak} bytes on disk, budget {budget}"
    view = puller.status()
    assert view.used <= budget and view.reserved == 0 and view.in_use == 0
    assert tree_bytes(cache_dir) == view.used


class GatedFetcher:
    """Wraps a fetcher: every read stops after its first chunk until `gate` opens."""

    def __init__(self, inner: Any, gate: asyncio.Event, fail: bool = False) -> None:
        self._inner = inner
        self._gate = gate
        self._fail = fail

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def read(
        self, info: ObjectInfo, start: int, end: int, *, ranged: bool = True
    ) -> AsyncGenerator[bytes, None]:
        first = True
        async for chunk in self._inner.read(info, start, end, ranged=ranged):
            yield chunk
            if first:
                first = False
                await self._gate.wait()
                if self._fail:
                    raise StorageUnavailable("storage 'local': cut")


@pytest.mark.parametrize("fails", [False, True], ids=["completes", "fails"])
async def test_a_partial_download_is_never_visible_under_the_final_name(
    tmp_path: Path, make_rig: Callable[..., Rig], fails: bool
) -> None:
    rig = make_rig(files(tmp_path, {"model.bin": 512 * KB}), range_size=64 * KB, retries=0)
    gate = asyncio.Event()
    opener = rig.puller._open_fetcher
    rig.puller._open_fetcher = lambda *a: GatedFetcher(opener(*a), gate, fails)
    pull = asyncio.create_task(rig.puller.pull("m", StorageRef("local", "model.bin")))
    artifacts = rig.settings.cache_dir / "artifacts"
    tmp = rig.settings.cache_dir / ".tmp"
    for _ in range(200):
        if tree_bytes(tmp):
            break
        await asyncio.sleep(0.01)
    assert tree_bytes(tmp) == 512 * KB  # allocated in full in the work directory
    assert list(artifacts.iterdir()) == []
    assert rig.puller.status().reserved == 512 * KB
    gate.set()
    if fails:
        with pytest.raises(StorageUnavailable):
            await pull
        assert list(artifacts.iterdir()) == []
    else:
        result = await pull
        assert result.local_path.read_bytes() == (tmp_path / "store" / "model.bin").read_bytes()
    assert list(tmp.iterdir()) == []
    assert rig.puller.status().reserved == 0


async def test_a_restart_keeps_artifacts_and_what_models_hold(
    tmp_path: Path, make_rig: Callable[..., Rig]
) -> None:
    storage = files(tmp_path, {"a": 100 * KB, "b": 100 * KB, "c": 100 * KB})
    first = make_rig(storage, cache_bytes=200 * KB)
    a = await first.puller.pull("m-a", StorageRef("local", "a"))
    await first.puller.pull("m-b", StorageRef("local", "b"))
    await first.puller.release("m-b")
    leftover = first.settings.cache_dir / ".tmp" / "crashed.1234"
    leftover.mkdir()
    (leftover / "part").write_bytes(b"x" * 1000)

    second = make_rig(storage, cache_bytes=200 * KB)  # the same directory, a new process
    assert not leftover.exists()
    assert second.puller.status().used == 200 * KB
    assert (await second.puller.pull("m-b", StorageRef("local", "b"))).cache_hit
    await second.puller.release("m-b")
    await second.puller.pull("m-c", StorageRef("local", "c"))  # room for c: b goes, held a stays
    assert a.local_path.exists()
    assert [v.models for v in second.puller.status().artifacts if v.source.endswith("/a")] == [
        ("m-a",)
    ]


async def test_a_smaller_budget_at_restart_evicts_down_to_it(
    tmp_path: Path, make_rig: Callable[..., Rig]
) -> None:
    storage = files(tmp_path, {n: 100 * KB for n in "abc"})
    first = make_rig(storage, cache_bytes=300 * KB)
    for n in "abc":
        await first.puller.pull(f"m-{n}", StorageRef("local", n))
        await first.puller.release(f"m-{n}")
    second = make_rig(storage, cache_bytes=150 * KB)
    assert second.puller.status().used == 100 * KB
    assert tree_bytes(second.settings.cache_dir) == 100 * KB
