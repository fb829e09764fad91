"""The load-claim recipe (mesh.cluster.claims) on both stores: one claim per model, gone with its
owner's lease, released by revision, and a loser's wait ended by the copy or by the claim's end."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from mesh.cluster.claims import LoadClaims
from mesh.cluster.codec import Keys, decode, encode
from mesh.cluster.mirror import Mirror
from mesh.cluster.records import PlacementRecord, PlacementState
from mesh.cluster.store import KeyValueStore
from mesh.errors import DeadlineExceeded


async def _owners(store: KeyValueStore, keys: Keys) -> tuple[LoadClaims, LoadClaims, int]:
    lease_a, lease_b = await store.grant(30), await store.grant(30)
    a = LoadClaims(store, keys, "router-a", SimpleNamespace(id=lease_a))
    b = LoadClaims(store, keys, "router-b", SimpleNamespace(id=lease_b))
    return a, b, lease_a


async def test_one_claim_per_model_and_it_goes_with_its_owners_lease(
    store: KeyValueStore, prefix: str
) -> None:
    keys = Keys(prefix)
    a, b, lease_a = await _owners(store, keys)
    revision = await a.claim("m", "pod-1", 1234)
    assert revision > 0
    assert await b.claim("m", "pod-2", 1234) == 0  # taken: the other router waits instead
    assert await b.claim("other", "pod-2", 10) > 0  # a claim is per model
    claim = await store.get(keys.claim("m"))
    assert claim is not None and claim.value == b"router-a pod-1"
    loading = await store.get(keys.placement("m", "pod-1"))
    assert loading is not None
    record = decode(PlacementRecord, loading.key, loading.value)
    assert (record.state, record.size) == (PlacementState.LOADING, 1234)
    await store.revoke(lease_a)  # router-a died mid-load
    assert await store.get(keys.claim("m")) is None
    assert await b.claim("m", "pod-2", 1234) > 0


async def test_release_keeps_the_record_a_pod_wrote_itself(
    store: KeyValueStore, prefix: str
) -> None:
    keys = Keys(prefix)
    a, _, _ = await _owners(store, keys)
    revision = await a.claim("m", "pod-1", 10)
    mine = await a.claim("n", "pod-1", 10)
    loaded = PlacementRecord("m", "pod-1", PlacementState.LOADED, time.time(), 99)
    await store.put(keys.placement("m", "pod-1"), encode(loaded))  # the pod published its own
    await a.release("m", "pod-1", revision)
    await a.release("n", "pod-1", mine)
    assert await store.get(keys.claim("m")) is None
    assert await store.get(keys.claim("n")) is None
    kept = await store.get(keys.placement("m", "pod-1"))
    assert kept is not None
    assert decode(PlacementRecord, kept.key, kept.value).state is PlacementState.LOADED
    assert await store.get(keys.placement("n", "pod-1")) is None  # only our loading record


async def test_a_losers_wait_ends_with_the_copy_or_with_the_claim(
    store: KeyValueStore, prefix: str
) -> None:
    keys = Keys(prefix)
    a, b, _ = await _owners(store, keys)
    mirror = Mirror(store, keys)
    await mirror.start()
    try:
        revision = await a.claim("m", "pod-1", 10)
        asked = 0

        def ready_later() -> str:  # the copy is ready from the fourth look on
            nonlocal asked
            asked += 1
            return "pod-1" if asked >= 4 else ""

        # While the claim stands the loser keeps looking; then it gets the copy.
        got = await b.wait_for_other(
            mirror, "m", ready=ready_later, loading=lambda: False,
            deadline=time.monotonic() + 30, check_every=0.05,
        )  # fmt: skip
        assert (got, asked >= 4) == ("pod-1", True)
        waiting = asyncio.create_task(
            b.wait_for_other(
                mirror,
                "m",
                ready=lambda: "",
                loading=lambda: False,
                deadline=time.monotonic() + 30,
                check_every=0.05,
            )
        )
        await a.release("m", "pod-1", revision)  # the winner's load failed: no copy
        assert await asyncio.wait_for(waiting, 10) == ""  # it may try itself now
        await a.claim("m", "pod-1", 10)
        with pytest.raises(DeadlineExceeded):
            await b.wait_for_other(
                mirror, "m", ready=lambda: "", loading=lambda: False,
                deadline=time.monotonic() + 0.2, check_every=0.05,
            )  # fmt: skip
    finally:
        await mirror.aclose()
