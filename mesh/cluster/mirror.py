"""A local, read-only view of the cluster, fed by a watch: what a router's request path reads.

The mirror loads everything under the root prefix at one revision, then follows a watch from
the next revision. On any failure of the watch (etcd restarted, the connection lost, history
compacted past the mirror's revision, etcd's data gone) it loads everything again and tells
subscribers what differs, so it converges to the store's state whatever happened in between.
Values that cannot be decoded are logged and treated as absent.

    mirror = Mirror(store, Keys("/mesh/"))
    await mirror.start()                 # returns once the first load is in
    mirror.instances["pod-1"].used      # plain dict reads, no I/O
    mirror.subscribe(lambda changes: ...)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from mesh.cluster.codec import Keys, decode
from mesh.cluster.records import InstanceRecord, ModelRecord, PlacementRecord, VModelRecord
from mesh.cluster.store import Entry, Event, EventType, KeyValueStore
from mesh.errors import MeshError, StoreError, Unavailable
from mesh.lifecycle import stop_task
from mesh.retry import Backoff

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Change:
    """One record that appeared, changed or went away (`record` None); `previous` is what the
    mirror held before (None if nothing)."""

    kind: str  # "model", "vmodel", "instance", "placement"
    key: str
    record: Any
    previous: Any = None


Subscriber = Callable[[list[Change]], None]
_BACKOFF = Backoff(0.2, 5.0)


class Mirror:
    def __init__(self, store: KeyValueStore, keys: Keys, backoff: Backoff = _BACKOFF) -> None:
        self._store = store
        self._keys = keys
        self._backoff = backoff
        self.revision = 0
        self._models: dict[str, ModelRecord] = {}
        self._vmodels: dict[str, VModelRecord] = {}
        self._instances: dict[str, InstanceRecord] = {}
        self._placements: dict[str, dict[str, PlacementRecord]] = {}
        self.models: Mapping[str, ModelRecord] = MappingProxyType(self._models)
        self.vmodels: Mapping[str, VModelRecord] = MappingProxyType(self._vmodels)
        self.instances: Mapping[str, InstanceRecord] = MappingProxyType(self._instances)
        self.placements: Mapping[str, Mapping[str, PlacementRecord]] = MappingProxyType(
            self._placements
        )
        self.resyncs = 0
        self._subscribers: list[Subscriber] = []
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        self._subscribers.append(subscriber)
        return lambda: self._subscribers.remove(subscriber)

    async def start(self, timeout: float | None = 30) -> None:
        self._task = asyncio.create_task(self._run(), name="mesh-mirror")
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def wait_for(self, predicate: Callable[[Mirror], bool], timeout: float = 10) -> None:
        """Wait until `predicate(mirror)` holds (checked after each change)."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: predicate(self))

    async def caught_up(
        self, predicate: Callable[[Mirror], bool], what: str, timeout: float = 10
    ) -> None:
        """`wait_for`, for a caller that answers a client: a view that does not show `what` in
        time is Unavailable (etcd or its watch is behind), not an internal error."""
        try:
            await self.wait_for(predicate, timeout)
        except TimeoutError:
            raise Unavailable(
                f"waited {timeout:g} s for this process's view of the cluster to show {what}: "
                "etcd or its watch is behind (what was written stays written); try again"
            ) from None

    async def aclose(self) -> None:
        await stop_task(self._task, "the mirror's watch")

    # -- the loop ------------------------------------------------------------------------------

    async def _run(self) -> None:
        delays = None
        while True:
            try:
                await self._resync()
                delays = None
                async for batch in self._store.watch(self._keys.root, self.revision + 1):
                    await self._apply_events(batch)
            except asyncio.CancelledError:
                raise
            except MeshError as exc:
                log.warning("mirror: %s; loading everything again", exc)
            except Exception:
                log.exception("mirror: unexpected failure; loading everything again")
            delays = delays or self._backoff.delays()
            await asyncio.sleep(next(delays))

    async def _resync(self) -> None:
        snapshot = await self._store.range(self._keys.root)
        old = self._all_keys()
        fresh: dict[str, Entry] = {e.key: e for e in snapshot.entries}
        events = [
            Event(EventType.DELETE, key, b"", snapshot.revision) for key in old if key not in fresh
        ]
        events += [
            Event(EventType.PUT, e.key, e.value, snapshot.revision) for e in snapshot.entries
        ]
        self.resyncs += 1
        await self._apply_events(events, snapshot.revision, only_changes=True)
        self._ready.set()

    def _all_keys(self) -> list[str]:
        k = self._keys
        keys = [k.model(m) for m in self._models] + [k.vmodel(v) for v in self._vmodels]
        keys += [k.instance(p) for p in self._instances]
        keys += [k.placement(m, p) for m, pods in self._placements.items() for p in pods]
        return keys

    async def _apply_events(
        self, events: list[Event], revision: int | None = None, only_changes: bool = False
    ) -> None:
        changes = []
        for event in events:
            change = self._apply(event, only_changes)
            if change is not None:
                changes.append(change)
        self.revision = revision if revision is not None else events[-1].mod_revision
        if changes:
            for subscriber in list(self._subscribers):
                try:
                    subscriber(changes)
                except Exception:
                    log.exception("mirror subscriber failed")
        async with self._changed:
            self._changed.notify_all()

    def _apply(self, event: Event, only_changes: bool) -> Change | None:
        k = self._keys
        key = event.key
        table: dict[str, Any]
        cls: type[Any]
        if key.startswith(k.placements):
            model_id, ident = k.placement_ids(key)
            table, kind, cls = (
                self._placements.setdefault(model_id, {}),
                "placement",
                PlacementRecord,
            )
        elif key.startswith(k.instances):
            ident, table, kind, cls = (
                key[len(k.instances) :],
                self._instances,
                "instance",
                InstanceRecord,
            )
        elif key.startswith(k.models):
            ident, table, kind, cls = key[len(k.models) :], self._models, "model", ModelRecord
        elif key.startswith(k.vmodels):
            ident, table, kind, cls = key[len(k.vmodels) :], self._vmodels, "vmodel", VModelRecord
        else:
            return None  # the leader key and anything else under the root
        record: Any = None
        if event.type is EventType.PUT:
            try:
                record = decode(cls, key, event.value)
            except StoreError as exc:
                log.warning("mirror: %s; treated as absent", exc)
        old = table.get(ident)
        if record is None:
            if old is None:
                if kind == "placement" and not table:
                    self._placements.pop(k.placement_ids(key)[0], None)
                return None
            del table[ident]
            if kind == "placement" and not table:
                self._placements.pop(k.placement_ids(key)[0], None)
        else:
            if only_changes and old == record:
                return None
            table[ident] = record
        name = key[len(k.placements) :] if kind == "placement" else ident
        return Change(kind, name, record, old)
