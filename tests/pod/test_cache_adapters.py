"""Adapters in the cache: a base and its adapters are evicted together, adapters first, and a
base stays while any adapter on it is in use. Fake runtime: sizes are exact."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from pathlib import Path

import pytest

from mesh.errors import CapacityExhausted, ModelNotReady
from mesh.pod.cache import ModelCache, ModelSource
from mesh.runtimes.registry import RuntimeRegistry
from tests.fakes import FakeRuntime, fake_source

KB = 10_000


def _cache(runtime: FakeRuntime, capacity: int = 10 * KB) -> ModelCache:
    now = [1000.0]

    def clock() -> float:
        now[0] += 1  # every event is one second after the one before
        return now[0]

    return ModelCache(
        capacity=capacity,
        runtimes=RuntimeRegistry([runtime]),
        meter=runtime.memory.read,
        clock=clock,
    )


def _adapter(tmp: Path, name: str, base: str, size: int = KB) -> ModelSource:
    return dataclasses.replace(fake_source(tmp, name, size), base=base)


async def test_an_adapter_needs_its_base_loaded(tmp_path: Path) -> None:
    cache = _cache(FakeRuntime())
    with pytest.raises(ModelNotReady, match="base model 'base'"):
        await cache.load(_adapter(tmp_path, "lora", "base"))
    await cache.aclose()


async def test_evicting_a_base_evicts_its_adapters_first(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    cache = _cache(runtime)
    await cache.load(fake_source(tmp_path, "base", 4 * KB))
    await cache.load(_adapter(tmp_path, "lora-a", "base"))
    await cache.load(_adapter(tmp_path, "lora-b", "base"))
    await cache.load(fake_source(tmp_path, "other", 2 * KB))
    gone: list[str] = []
    cache.on_gone(gone.append)
    # 8 KB used; 5 KB more: the base group (6 KB, least recently used as a group) goes.
    outcome = await cache.load(fake_source(tmp_path, "big", 5 * KB))
    assert set(outcome.evicted) == {"base"}
    assert gone.index("base") > max(gone.index("lora-a"), gone.index("lora-b"))
    assert sorted(cache.loaded_ids()) == ["big", "other"]
    assert cache.used == 7 * KB
    await cache.aclose()


async def test_a_base_stays_while_an_adapter_on_it_is_in_use(tmp_path: Path) -> None:
    cache = _cache(FakeRuntime())
    await cache.load(fake_source(tmp_path, "base", 4 * KB))
    await cache.load(_adapter(tmp_path, "lora", "base"))
    await cache.load(fake_source(tmp_path, "other", 4 * KB))
    held = cache.acquire("lora")  # the base itself is idle and least recently used
    assert held is not None
    # (Were the base chosen, its unload would wait for the adapter's request: bounded here.)
    outcome = await asyncio.wait_for(cache.load(fake_source(tmp_path, "x", 4 * KB)), 10)
    assert outcome.evicted == ("other",)
    assert cache.is_loaded("base") and cache.is_loaded("lora")
    with pytest.raises(CapacityExhausted):
        await cache.load(fake_source(tmp_path, "y", 6 * KB))
    cache.release(held)
    await cache.aclose()


async def test_loading_an_adapter_never_evicts_its_own_base(tmp_path: Path) -> None:
    cache = _cache(FakeRuntime())
    await cache.load(fake_source(tmp_path, "base", 5 * KB))
    await cache.load(fake_source(tmp_path, "other", 4 * KB))
    cache.release(cache.acquire("other"))  # base is now the least recently used
    outcome = await cache.load(_adapter(tmp_path, "lora", "base", 2 * KB))
    assert outcome.evicted == ("other",)
    assert cache.is_loaded("base")
    await cache.aclose()


async def test_unloading_a_base_unloads_its_adapters(tmp_path: Path) -> None:
    cache = _cache(FakeRuntime())
    await cache.load(fake_source(tmp_path, "base", 4 * KB))
    await cache.load(_adapter(tmp_path, "lora", "base"))
    assert await cache.unload("base") == 4 * KB
    assert cache.loaded_ids() == []
    assert cache.used == 0
    await cache.aclose()


async def test_unloading_an_adapter_then_its_base_while_the_adapter_is_busy_ends_both(
    tmp_path: Path,
) -> None:
    """An adapter serving a request is asked to unload, then its base: both unloads end once
    the request does (the base's unload waits for the adapter's, never starts it twice)."""
    runtime = FakeRuntime()
    cache = _cache(runtime)
    await cache.load(fake_source(tmp_path, "base", 4 * KB))
    await cache.load(_adapter(tmp_path, "lora", "base"))
    held = cache.acquire("lora")
    assert held is not None
    adapter = asyncio.create_task(cache.unload("lora"))
    base = asyncio.create_task(cache.unload("base"))
    for _ in range(5):  # a few turns of the loop: both unloads reach their waits
        await asyncio.sleep(0)
    cache.release(held)
    await asyncio.wait_for(asyncio.gather(adapter, base), 10)
    assert cache.loaded_ids() == []
    assert runtime.closed == 2  # each model closed once
    await cache.aclose()


async def test_a_base_with_an_adapter_loading_into_it_is_not_evicted(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    cache = _cache(runtime, capacity=10 * KB)
    await cache.load(fake_source(tmp_path, "base", 4 * KB))
    await cache.load(fake_source(tmp_path, "other", 3 * KB))
    busy = cache.acquire("other")  # only the base could make room
    assert busy is not None
    gate = threading.Event()
    runtime.gates["lora"] = gate
    lora = asyncio.create_task(cache.load(_adapter(tmp_path, "lora", "base", KB)))
    for _ in range(1000):  # until the adapter's load is in the runtime
        if runtime.running:
            break
        await asyncio.sleep(0.01)
    assert runtime.running == 1
    with pytest.raises(CapacityExhausted):
        await cache.load(fake_source(tmp_path, "x", 4 * KB))
    gate.set()
    await asyncio.wait_for(lora, 10)
    assert cache.is_loaded("base") and cache.is_loaded("lora")
    cache.release(busy)
    await cache.aclose()
