"""Leader election: one leader at a time, and a new one when it resigns or dies."""

from __future__ import annotations

import asyncio

from mesh.cluster.election import LeaderElection
from mesh.cluster.store import KeyValueStore
from mesh.retry import Backoff

FAST = Backoff(0.05, 0.3)


async def _until(predicate, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_one_leader_then_another_when_it_resigns(store: KeyValueStore, prefix: str) -> None:
    key = prefix + "leader"
    elections = [LeaderElection(store, key, f"router-{i}", ttl=5, backoff=FAST) for i in range(3)]
    for e in elections:
        await e.start()
    try:
        await _until(lambda: sum(e.is_leader for e in elections) == 1)
        await asyncio.sleep(0.5)
        assert sum(e.is_leader for e in elections) == 1  # and it stays one
        first = next(e for e in elections if e.is_leader)
        assert await first.leader() == first.candidate
        await first.aclose()
        rest = [e for e in elections if e is not first]
        await _until(lambda: sum(e.is_leader for e in rest) == 1)
        second = next(e for e in rest if e.is_leader)
        assert await second.leader() == second.candidate
    finally:
        for e in elections:
            await e.aclose()


async def test_a_leader_whose_lease_is_revoked_steps_down_and_another_takes_over(
    store: KeyValueStore, prefix: str
) -> None:
    key = prefix + "leader"
    a = LeaderElection(store, key, "a", ttl=5, backoff=FAST)
    await a.start()
    await _until(lambda: a.is_leader)
    b = LeaderElection(store, key, "b", ttl=5, backoff=FAST)
    await b.start()
    try:
        await asyncio.sleep(0.3)
        assert not b.is_leader
        entry = await store.get(key)
        assert entry is not None
        await store.revoke(entry.lease)  # fault: a's lease is gone (as if it had died)
        await _until(lambda: b.is_leader and not a.is_leader)
        assert await b.leader() == "b"
    finally:
        await a.aclose()
        await b.aclose()
