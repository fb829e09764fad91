"""One load per mesh: the load-claim recipe, beside the lease and election recipes.

A router about to load a copy claims it in one transaction: `claims/{model}` is created only if
absent (holding "{owner} {pod}"), with a `loading` placement record on the chosen pod, both
under the owner's lease, so that a router that dies mid-load lets its claim expire. A router
that loses the claim waits (`wait_for_other`) for the copy the winner is loading, judged by a
"copy ready" predicate of the caller's, and tries itself if the claim goes away without one.
*Why a claim key*: etcd's compare works on single keys, so "no placement of this model anywhere"
cannot be a transaction condition; one key per model can.

The recipe reads nothing of the router: the caller hands it the store, the keys, its lease and
predicates over what it knows (`ready() -> pod id or ""`, `loading() -> bool`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from mesh.cluster.codec import Keys, encode
from mesh.cluster.mirror import Mirror
from mesh.cluster.records import PlacementRecord, PlacementState
from mesh.cluster.store import Compare, Delete, KeyValueStore, Put
from mesh.errors import DeadlineExceeded, MeshError

log = logging.getLogger(__name__)


class LoadClaims:
    """Claims of `owner` (a router id) under `lease` (an object with `.id`, renewed elsewhere)."""

    def __init__(self, store: KeyValueStore, keys: Keys, owner: str, lease: Any) -> None:
        self._store = store
        self._keys = keys
        self._owner = owner
        self._lease = lease

    async def claim(self, model_id: str, pod_id: str, size: int) -> int:
        """The claim's revision, or 0 if another owner holds it. The `loading` record is charged
        `size`, what placement counted on, until the pod publishes its own estimate. Raises
        StoreUnavailable when the store cannot be reached."""
        lease = self._lease.id
        claim = self._keys.claim(model_id)
        loading = PlacementRecord(model_id, pod_id, PlacementState.LOADING, time.time(), size)
        result = await self._store.txn(
            [Compare.absent(claim)],
            [
                Put(claim, f"{self._owner} {pod_id}".encode(), lease),
                Put(self._keys.placement(model_id, pod_id), encode(loading), lease),
            ],
        )
        return result.revision if result.succeeded else 0

    async def release(self, model_id: str, pod_id: str, revision: int) -> None:
        """Drop the claim, and our `loading` record unless the pod has written its own."""
        claim = self._keys.claim(model_id)
        placement = self._keys.placement(model_id, pod_id)
        try:
            await self._store.txn([Compare.mod_revision_is(claim, revision)], [Delete(claim)])
            await self._store.txn(
                [Compare.mod_revision_is(placement, revision)], [Delete(placement)]
            )
        except MeshError as exc:
            log.warning(
                "could not release the claim on %s: %s (it expires with our lease)", model_id, exc
            )

    async def wait_for_other(
        self,
        mirror: Mirror,
        model_id: str,
        ready: Callable[[], str],
        loading: Callable[[], bool],
        deadline: float,
        check_every: float,
    ) -> str:
        """Another owner claimed the load: the pod `ready()` names once a copy is loaded, or ""
        if the claim went away with no copy and nothing `loading()`. Checks the claim every
        `check_every` seconds; DeadlineExceeded at `deadline` (monotonic)."""
        claim = self._keys.claim(model_id)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(f"model {model_id!r} was not loaded within the deadline")
            try:
                await mirror.wait_for(lambda _: bool(ready()), timeout=min(remaining, check_every))
                return ready()
            except TimeoutError:
                pass
            if await self._store.get(claim) is None and not loading():
                return ready()
