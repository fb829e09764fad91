"""An in-memory KeyValueStore with etcd's semantics, for unit tests and the single-process mode.

Revisions, per-key versions, transactions, leases that expire (a reaper thread deletes their
keys and tells watchers), prefix watches from a revision with a history that `compact` trims.
Safe to share between threads and event loops: state sits behind one lock, and each watcher's
events are handed to its own loop.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence

from mesh.cluster.store import (
    Compare,
    Delete,
    Entry,
    Event,
    EventType,
    Operation,
    Put,
    Range,
    TxnResult,
)
from mesh.errors import Compacted, LeaseNotFound, StoreUnavailable


class _Watcher:
    def __init__(self, prefix: str, loop: asyncio.AbstractEventLoop) -> None:
        self.prefix = prefix
        self.loop = loop
        self.queue: asyncio.Queue[list[Event] | None] = asyncio.Queue()

    def send(self, batch: list[Event] | None) -> None:
        with contextlib.suppress(RuntimeError):  # the watcher's loop is closed
            self.loop.call_soon_threadsafe(self.queue.put_nowait, batch)


class MemoryStore:
    """>>> store = MemoryStore(); await store.put("a", b"1")"""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self._data: dict[str, Entry] = {}
        self._revision = 1  # etcd starts at 1
        self._history: list[Event] = []
        self._compacted = 0
        self._leases: dict[int, tuple[int, float]] = {}  # id -> (ttl, deadline)
        self._lease_keys: dict[int, set[str]] = {}
        self._lease_ids = itertools.count(0x1000)
        self._watchers: list[_Watcher] = []
        self._closed = False
        self._reaper: threading.Thread | None = None
        self._stop = threading.Event()

    # -- reads ---------------------------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        with self._lock:
            self._check()
            return self._data.get(key)

    async def range(self, prefix: str) -> Range:
        with self._lock:
            self._check()
            entries = tuple(self._data[k] for k in sorted(self._data) if k.startswith(prefix))
            return Range(entries, self._revision)

    async def revision(self) -> int:
        with self._lock:
            self._check()
            return self._revision

    # -- writes --------------------------------------------------------------------------------

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        result = await self.txn((), (Put(key, value, lease),))
        return result.revision

    async def delete(self, key: str) -> bool:
        with self._lock:
            existed = key in self._data
        if existed:
            await self.txn((), (Delete(key),))
        return existed

    async def delete_prefix(self, prefix: str) -> int:
        with self._lock:
            self._check()
            keys = [k for k in self._data if k.startswith(prefix)]
            if keys:
                self._apply([Delete(k) for k in keys])
            return len(keys)

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Operation],
        failure: Sequence[Operation] = (),
    ) -> TxnResult:
        with self._lock:
            self._check()
            ok = all(c.holds(self._data.get(c.key)) for c in compares)
            ops = success if ok else failure
            for op in ops:
                if isinstance(op, Put) and op.lease and op.lease not in self._leases:
                    raise LeaseNotFound(f"lease {op.lease:x} not found")
            if any(isinstance(op, Put) or op.key in self._data for op in ops):
                self._apply(list(ops))
            return TxnResult(ok, self._revision)

    def _apply(self, ops: list[Operation]) -> None:
        """One revision for all of `ops`; the lock is held."""
        self._revision += 1
        rev = self._revision
        events: list[Event] = []
        for op in ops:
            old = self._data.get(op.key)
            if old is not None and old.lease:
                self._lease_keys.get(old.lease, set()).discard(op.key)
            if isinstance(op, Put):
                self._data[op.key] = Entry(
                    op.key,
                    op.value,
                    old.create_revision if old else rev,
                    rev,
                    old.version + 1 if old else 1,
                    op.lease,
                )
                if op.lease:
                    self._lease_keys.setdefault(op.lease, set()).add(op.key)
                events.append(Event(EventType.PUT, op.key, op.value, rev))
            elif old is not None:
                del self._data[op.key]
                events.append(Event(EventType.DELETE, op.key, b"", rev))
        self._history.extend(events)
        self._notify(events)

    def _notify(self, events: list[Event]) -> None:
        for watcher in self._watchers:
            batch = [e for e in events if e.key.startswith(watcher.prefix)]
            if batch:
                watcher.send(batch)

    # -- leases --------------------------------------------------------------------------------

    async def grant(self, ttl: int) -> int:
        with self._lock:
            self._check()
            lease = next(self._lease_ids)
            self._leases[lease] = (ttl, self._clock() + ttl)
            self._start_reaper()
            return lease

    async def keep_alive(self, lease: int) -> int:
        with self._lock:
            self._check()
            self._expire()
            if lease not in self._leases:
                raise LeaseNotFound(f"lease {lease:x} not found")
            ttl, _ = self._leases[lease]
            self._leases[lease] = (ttl, self._clock() + ttl)
            return ttl

    async def revoke(self, lease: int) -> None:
        with self._lock:
            self._check()
            self._end_lease(lease)

    def _end_lease(self, lease: int) -> None:
        self._leases.pop(lease, None)
        keys = self._lease_keys.pop(lease, set())
        present = [k for k in sorted(keys) if k in self._data]
        if present:
            self._apply([Delete(k) for k in present])

    def _expire(self) -> None:
        now = self._clock()
        for lease, (_, deadline) in list(self._leases.items()):
            if deadline <= now:
                self._end_lease(lease)

    def _start_reaper(self) -> None:
        if self._reaper is not None:
            return

        def reap() -> None:
            while not self._stop.wait(0.05):
                with self._lock:
                    self._expire()

        self._reaper = threading.Thread(target=reap, name="memory-store-reaper", daemon=True)
        self._reaper.start()

    # -- watches and history -------------------------------------------------------------------

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[list[Event]]:
        watcher = _Watcher(prefix, asyncio.get_running_loop())
        with self._lock:
            self._check()
            if start_revision and start_revision <= self._compacted:
                raise Compacted(
                    f"revision {start_revision} is compacted (at {self._compacted})",
                    self._compacted,
                )
            revisions = [e.mod_revision for e in self._history]
            first = bisect.bisect_left(revisions, start_revision)
            backlog = [e for e in self._history[first:] if e.key.startswith(prefix)]
            self._watchers.append(watcher)
        try:
            if backlog:
                yield backlog
            while True:
                batch = await watcher.queue.get()
                if batch is None:
                    raise StoreUnavailable("the store was closed")
                yield batch
        finally:
            with self._lock:
                if watcher in self._watchers:
                    self._watchers.remove(watcher)

    async def compact(self, revision: int) -> None:
        with self._lock:
            self._check()
            self._compacted = max(self._compacted, revision - 1)
            self._history = [e for e in self._history if e.mod_revision >= revision]

    # -- lifecycle -----------------------------------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise StoreUnavailable("the store is closed")

    async def aclose(self) -> None:
        with self._lock:
            self._closed = True
            for watcher in self._watchers:
                watcher.send(None)
        self._stop.set()
