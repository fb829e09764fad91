"""One contract, two backends: everything the mesh relies on, against MemoryStore and etcd."""

from __future__ import annotations

import asyncio

import pytest

from mesh.cluster.store import Compare, Delete, EventType, KeyValueStore, Put
from mesh.errors import Compacted, LeaseNotFound


async def test_put_get_and_revisions(store: KeyValueStore, prefix: str) -> None:
    key = prefix + "a"
    assert await store.get(key) is None
    r1 = await store.put(key, b"1")
    r2 = await store.put(key, b"2")
    assert r2 == r1 + 1
    entry = await store.get(key)
    assert entry is not None
    assert (entry.value, entry.version, entry.create_revision, entry.mod_revision) == (
        b"2", 2, r1, r2,
    )  # fmt: skip
    assert await store.revision() == r2


async def test_range_is_by_prefix_sorted_and_carries_its_revision(
    store: KeyValueStore, prefix: str
) -> None:
    for name in ("b", "a", "c/x"):
        await store.put(prefix + name, name.encode())
    await store.put(prefix[:-1] + "X", b"outside")  # shares the prefix minus its slash
    result = await store.range(prefix)
    assert [e.key for e in result.entries] == [prefix + "a", prefix + "b", prefix + "c/x"]
    assert result.revision == await store.revision()


async def test_delete_and_delete_prefix(store: KeyValueStore, prefix: str) -> None:
    await store.put(prefix + "a", b"1")
    await store.put(prefix + "d/1", b"1")
    await store.put(prefix + "d/2", b"1")
    assert await store.delete(prefix + "a")
    assert not await store.delete(prefix + "a")
    assert await store.delete_prefix(prefix + "d/") == 2
    assert (await store.range(prefix)).entries == ()


async def test_transaction_compares(store: KeyValueStore, prefix: str) -> None:
    key = prefix + "claim"
    won = await store.txn([Compare.absent(key)], [Put(key, b"pod-1")])
    lost = await store.txn([Compare.absent(key)], [Put(key, b"pod-2")], [Put(prefix + "f", b"x")])
    assert won.succeeded
    assert not lost.succeeded
    assert (await store.get(key)).value == b"pod-1"  # type: ignore[union-attr]
    assert (await store.get(prefix + "f")) is not None  # the failure branch ran
    assert (await store.txn([Compare.value_is(key, b"pod-1")], [Delete(key)])).succeeded
    assert await store.get(key) is None
    rev = await store.put(key, b"v")
    assert not (await store.txn([Compare.mod_revision_is(key, rev - 1)], [Delete(key)])).succeeded
    assert (await store.txn([Compare.mod_revision_is(key, rev), Compare.exists(key)], [])).succeeded


async def test_concurrent_claims_exactly_one_wins(store: KeyValueStore, prefix: str) -> None:
    key = prefix + "placements/m/claim"
    results = await asyncio.gather(
        *(store.txn([Compare.absent(key)], [Put(key, f"router-{i}".encode())]) for i in range(20))
    )
    winners = [i for i, r in enumerate(results) if r.succeeded]
    assert len(winners) == 1
    assert (await store.get(key)).value == f"router-{winners[0]}".encode()  # type: ignore[union-attr]


async def test_lease_expiry_deletes_keys_and_keep_alive_holds_them(
    store: KeyValueStore, prefix: str
) -> None:
    kept = await store.grant(2)
    dropped = await store.grant(1)
    await store.put(prefix + "kept", b"1", lease=kept)
    await store.put(prefix + "dropped", b"1", lease=dropped)
    for _ in range(8):  # 4 s, past both TTLs; only `kept` is refreshed
        await asyncio.sleep(0.5)
        assert await store.keep_alive(kept) > 0
    assert await store.get(prefix + "kept") is not None
    assert await store.get(prefix + "dropped") is None
    with pytest.raises(LeaseNotFound):
        await store.keep_alive(dropped)


async def test_revoke_deletes_at_once(store: KeyValueStore, prefix: str) -> None:
    lease = await store.grant(30)
    await store.put(prefix + "a", b"1", lease=lease)
    await store.revoke(lease)
    assert await store.get(prefix + "a") is None
    await store.revoke(lease)  # already gone: no error
    with pytest.raises(LeaseNotFound):
        await store.put(prefix + "b", b"1", lease=lease)


async def test_watch_replays_from_a_revision_then_follows(
    store: KeyValueStore, prefix: str
) -> None:
    start = await store.put(prefix + "a", b"1")
    await store.put(prefix + "b", b"2")
    await store.delete(prefix + "a")
    await store.put("/elsewhere/" + prefix, b"not watched")
    seen = []
    stream = store.watch(prefix, start)
    try:
        async with asyncio.timeout(10):
            async for batch in stream:
                seen.extend(batch)
                if len(seen) == 3:
                    await store.put(prefix + "c", b"3")
                if len(seen) == 4:
                    break
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    assert [(e.type, e.key.removeprefix(prefix), e.value) for e in seen] == [
        (EventType.PUT, "a", b"1"),
        (EventType.PUT, "b", b"2"),
        (EventType.DELETE, "a", b""),
        (EventType.PUT, "c", b"3"),
    ]
    assert [e.mod_revision for e in seen] == sorted(e.mod_revision for e in seen)


async def test_watch_from_a_compacted_revision_fails_clearly(
    store: KeyValueStore, prefix: str
) -> None:
    old = await store.put(prefix + "a", b"1")
    await store.put(prefix + "a", b"2")
    now = await store.put(prefix + "a", b"3")
    await store.compact(now)

    async def follow() -> None:
        async for _ in store.watch(prefix, old):
            pass

    with pytest.raises(Compacted):
        await asyncio.wait_for(follow(), 10)
