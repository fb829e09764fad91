"""Leader election on the KeyValueStore: one process at a time does the mesh's background work.

A candidate holds the `leader` key under its own lease, created in a transaction only if the
key is absent; the others watch the key and try again when it goes (the leader resigned, or
died and its lease expired). The lease is kept alive from a thread (mesh.cluster.lease), so a
busy leader does not lose it by accident; when it is lost anyway, `is_leader` turns false
before anyone else can win.

    election = LeaderElection(store, Keys().leader, "router-a")
    await election.start()
    if election.is_leader: ...
    await election.aclose()   # resigns
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from mesh.cluster.lease import LeaseKeeper
from mesh.cluster.store import Compare, EventType, KeyValueStore, Put
from mesh.errors import LeaseNotFound, MeshError
from mesh.lifecycle import stop_task
from mesh.retry import Backoff

log = logging.getLogger(__name__)


class LeaderElection:
    def __init__(
        self,
        store: KeyValueStore,
        key: str,
        candidate: str,
        *,
        ttl: int = 10,
        on_change: Callable[[bool], None] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self._store = store
        self._key = key
        self.candidate = candidate
        self._ttl = ttl
        self._on_change = on_change
        self._backoff = backoff or Backoff(0.2, 3.0)
        self.is_leader = False
        self._lease = 0
        self._keeper: LeaseKeeper | None = None
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"election-{self.candidate}")

    async def leader(self) -> str | None:
        """Who leads now, as the store says."""
        entry = await self._store.get(self._key)
        return entry.value.decode() if entry is not None else None

    async def aclose(self) -> None:
        """Stop campaigning; a leader resigns, so another candidate takes over at once."""
        await stop_task(self._task, "the election")
        await self._resign()

    async def _run(self) -> None:
        delays = None
        while True:
            try:
                await self._campaign()
                delays = None
            except asyncio.CancelledError:
                raise
            except LeaseNotFound:
                self._on_lost(self._lease)
            except MeshError as exc:
                self._set(False)
                delays = delays or self._backoff.delays()
                delay = next(delays)
                log.info("election %s: %s; again in %.1fs", self._key, exc, delay)
                await asyncio.sleep(delay)

    async def _campaign(self) -> None:
        if not self._lease:
            self._lease = await self._store.grant(self._ttl)
            self._lost.clear()
            loop = asyncio.get_running_loop()

            def on_lost(lease: int) -> None:  # from the keeper's thread
                with contextlib.suppress(RuntimeError):  # the loop has closed: nobody to tell
                    loop.call_soon_threadsafe(self._on_lost, lease)

            reconnect = getattr(self._store, "reconnect", None)
            self._keeper = LeaseKeeper(
                reconnect if reconnect is not None else (lambda: self._store),
                self._lease,
                self._ttl,
                on_lost,
                owns_store=reconnect is not None,
            )
            self._keeper.start()
        me = self.candidate.encode()
        won = await self._store.txn([Compare.absent(self._key)], [Put(self._key, me, self._lease)])
        entry = await self._store.get(self._key)
        self._set(entry is not None and entry.value == me and entry.lease == self._lease)
        if entry is None and not won.succeeded:
            return  # it went between the two calls: campaign again
        # Wait until the key is deleted (watching from the revision we saw, so a deletion
        # in between is not missed) or our lease is lost.
        start = (won.revision if won.succeeded else entry.mod_revision) + 1  # type: ignore[union-attr]
        waits = {
            asyncio.ensure_future(self._watch_until_deleted(start)),
            asyncio.ensure_future(self._lost.wait()),
        }
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in waits:
                task.cancel()

    async def _watch_until_deleted(self, start: int) -> None:
        async for batch in self._store.watch(self._key, start):
            if any(e.key == self._key and e.type is EventType.DELETE for e in batch):
                return

    def _on_lost(self, lease: int) -> None:
        if lease == self._lease:
            log.warning("election %s: lease lost", self._key)
            self._lease = 0
            self._set(False)
            self._lost.set()

    async def _resign(self) -> None:
        if self._keeper is not None:
            self._keeper.stop()
            self._keeper = None
        if self._lease:
            with contextlib.suppress(MeshError, TimeoutError):
                await asyncio.wait_for(self._store.revoke(self._lease), 5)
            self._lease = 0
        self._set(False)

    def _set(self, leader: bool) -> None:
        if leader != self.is_leader:
            self.is_leader = leader
            log.info(
                "%s is %s for %s", self.candidate, "leader" if leader else "follower", self._key
            )
            if self._on_change is not None:
                self._on_change(leader)
