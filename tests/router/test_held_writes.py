"""The demand record of mesh.router.held follows the requests held, whatever order the etcd
writes finish in: one writer per model at a time, so a slow write of an old count never lands
after the write of the newer one. Pure logic, on the in-memory store (the same store contract
as etcd) with each write held back until the test lets it through."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from mesh.cluster.demand import read_demand
from mesh.cluster.memory import MemoryStore
from mesh.cluster.records import ModelRecord
from mesh.router.held import HeldRequests


class GatedStore:
    """MemoryStore whose puts and deletes wait, in the order they came, to be let through."""

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.blocked = False
        self.waiting: list[asyncio.Event] = []

    async def _gate(self) -> None:
        if self.blocked:
            event = asyncio.Event()
            self.waiting.append(event)
            await event.wait()

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        await self._gate()
        return await self.inner.put(key, value)

    async def delete(self, key: str) -> bool:
        await self._gate()
        return await self.inner.delete(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_slow_demand_write_never_lands_after_the_newer_one() -> None:
    store = GatedStore()
    held = HeldRequests(store, None, "/t/", "r1", SimpleNamespace(id=7))  # type: ignore[arg-type]
    record = ModelRecord("m", "onnx")

    def enter() -> None:
        held._enter("m", "default", record)

    def leave() -> None:
        held._leave("m", "default", record)

    enter()
    await _settle()  # held 1: published
    store.blocked = True
    leave()  # held 0: its delete is slow
    await _settle()
    enter()
    leave()  # two more writers queue behind it
    await _settle()
    store.waiting.pop(0).set()  # the delete lands; the next writer's delete is slow
    await _settle()
    enter()  # held 1 again
    await _settle()
    for _ in range(2):  # the slow delete, then the next write, land in turn
        store.waiting.pop(0).set()
        await _settle()
    leave()  # held 0: the last change
    await _settle()
    if store.waiting:  # the newest write finishes first, the older ones after it
        store.waiting.pop().set()
        await _settle()
    while store.waiting:
        store.waiting.pop(0).set()
        await _settle()
    await held.aclose()

    assert held.count == 0
    assert await read_demand(store, "/t/") == []  # nothing held: no demand left in etcd
