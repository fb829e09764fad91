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


async def test_a_revoked_lease_ends_that_leadership_and_one_leader_follows(
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
        await store.revoke(entry.lease)  # fault: the leader's lease is gone
        await _until(lambda: a.is_leader + b.is_leader == 1 and a._lease != entry.lease)
        now = await store.get(key)
        assert now is not None
        assert now.lease != entry.lease
        assert now.value.decode() == ("a" if a.is_leader else "b")
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_crashed_leader_is_replaced_once_its_lease_expires(
    store: KeyValueStore, prefix: str
) -> None:
    key = prefix + "leader"
    a = LeaderElection(store, key, "a", ttl=2, backoff=FAST)
    await a.start()
    await _until(lambda: a.is_leader)
    b = LeaderElection(store, key, "b", ttl=2, backoff=FAST)
    await b.start()
    try:
        # A crash, as far as the store can tell: campaigning and keep-alives stop, nothing is
        # revoked.
        assert a._task is not None
        assert a._keeper is not None
        a._task.cancel()
        a._keeper.stop()
        await _until(lambda: b.is_leader, timeout=10)
        assert await b.leader() == "b"
    finally:
        a._lease = 0  # crashed: nothing to resign
        await a.aclose()
        await b.aclose()
