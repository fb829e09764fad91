"""Leased registration: a pod's instance record and placement records, kept under its lease.

The pod describes itself with a `state()` function; the registration publishes that state
into the store, coalesced: a change the mesh must know at once (a load starts, ends or fails,
a model goes, the pod drains) is written within `min_interval`; last-use times and in-flight
counts travel at most every `max_interval`, with whatever else is written; nothing is written
per request. Writes go in transactions of at most 100 operations.

Identity: the pod id is claimed in a transaction. The instance record is created only if
absent, or taken over only if it is this process's own (its `incarnation`) left under an expired
lease. An id another live process holds is PodIdTaken: at start the registration waits one lease
TTL for the holder's lease to run out (a restarted pod finds its predecessor's record), then
gives up and says so (`conflict`); the pod exits with that line. A pod deletes only the records
it wrote, each only while it still holds what it wrote.

Failures: the lease is kept alive from its own thread (mesh.cluster.lease). If the lease is
lost (expired while etcd was away, or revoked), the pod registers again under a new lease and
republishes everything it holds, as soon as etcd answers (retries at most a second apart).
While etcd is unreachable the pod keeps serving and catches up when etcd returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

from mesh.cluster.codec import Keys, decode, encode
from mesh.cluster.lease import LeaseKeeper
from mesh.cluster.records import InstanceRecord, PlacementRecord
from mesh.cluster.store import Compare, Delete, KeyValueStore, Operation, Put
from mesh.errors import LeaseNotFound, MeshError, PodIdTaken, StoreError
from mesh.lifecycle import stop_task
from mesh.retry import Backoff

log = logging.getLogger(__name__)

_TXN_OPS = 100  # etcd refuses transactions of more than 128 operations by default


@dataclass(frozen=True, slots=True)
class PodState:
    instance: InstanceRecord
    placements: tuple[PlacementRecord, ...]


def _significant(record: InstanceRecord) -> InstanceRecord:
    """The instance fields whose change is published at once: byte counts in whole MiB (the
    device's reading moves with every allocation, on a CPU pod with the RSS), so that a pod
    does not write its record at every notification for a few pages' difference."""
    return replace(
        record,
        lru_time=0.0,
        in_flight=0,
        updated_at=0.0,
        used=record.used >> 20,
        host_used=record.host_used >> 20,
        host_model_bytes=tuple(n >> 20 for n in record.host_model_bytes),
        device_used=record.device_used >> 20,
    )


class PodRegistration:
    """>>> registration = PodRegistration(store, Keys(), pod_state)
    >>> await registration.start(); registration.notify()  # after each state change"""

    def __init__(
        self,
        store: KeyValueStore,
        keys: Keys,
        state: Callable[[], PodState],
        *,
        ttl: int = 10,
        min_interval: float = 0.2,
        max_interval: float = 3.0,
        backoff: Backoff | None = None,
    ) -> None:
        self._store = store
        self._keys = keys
        self._state = state
        self._ttl = ttl
        self._min_interval = min_interval
        self._max_interval = max_interval
        self._backoff = backoff or Backoff(0.2, 1.0)
        self.lease = 0
        self._keeper: LeaseKeeper | None = None
        self._published_instance: InstanceRecord | None = None
        self._instance_written = 0.0
        self._published: dict[str, PlacementRecord] = {}
        self._written: dict[str, bytes] = {}  # what this pod last wrote at each placement key
        self._wake = asyncio.Event()
        self._registered = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._publishing = asyncio.Lock()  # the loop's publish and publish_now, one at a time
        self.incarnation = uuid.uuid4().hex
        self._ever_registered = False
        self._taken_since: float | None = None
        # Set when the pod id stays held by another live process: the pod should exit.
        self.conflict: PodIdTaken | None = None
        self.conflicted = asyncio.Event()
        self.registrations = 0
        self.writes = 0

    async def start(self) -> None:
        """Start publishing; returns at once (etcd may be away: the pod serves regardless)."""
        self._task = asyncio.create_task(self._run(), name="mesh-registration")

    async def wait_registered(self, timeout: float = 30) -> None:
        await asyncio.wait_for(self._registered.wait(), timeout)

    def notify(self) -> None:
        """Something the mesh should know changed: publish soon."""
        self._wake.set()

    async def publish_now(self, timeout: float = 5) -> None:
        """Publish the pod's state at once, not at the loop's next turn (a drain's `draining`
        flag, which routers must see before the lease goes); failures are logged."""
        if not self.lease:
            return
        try:
            await asyncio.wait_for(self._publish(), timeout)
        except (MeshError, TimeoutError) as exc:
            log.warning("could not publish the pod's state: %s", exc)

    async def aclose(self, revoke: bool = True) -> None:
        """Stop publishing; with `revoke`, the pod's records disappear at once."""
        self._closing = True
        if self._task is not None:
            # Cancellation alone is not enough on Python 3.11: asyncio.wait_for can swallow a
            # cancel that arrives as its inner wait completes, and the loop then ran on, so a
            # pod's shutdown waited forever. The flag ends the loop at its next turn whatever
            # happens to the cancel, and the wait for it is bounded.
            self._wake.set()
            await stop_task(self._task, "registration")
            self._task = None
        self._stop_keeper()
        if revoke and self.lease:
            try:
                await asyncio.wait_for(self._store.revoke(self.lease), 5)
            except (MeshError, TimeoutError) as exc:
                log.warning("could not revoke lease %x: %s", self.lease, exc)
            self.lease = 0

    # -- the loop ------------------------------------------------------------------------------

    async def _run(self) -> None:
        delays = None
        while not self._closing:
            try:
                if not self.lease:
                    await self._register()
                await self._publish()
                delays = None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._max_interval):
                        await self._wake.wait()
                if self._closing:
                    return
                await asyncio.sleep(self._min_interval)  # let a burst of changes coalesce
                self._wake.clear()
            except asyncio.CancelledError:
                raise
            except LeaseNotFound:
                log.warning("pod lease %x is gone: registering again", self.lease)
                self._lost(self.lease)
            except PodIdTaken as exc:
                now = time.monotonic()
                if self._taken_since is None:
                    self._taken_since = now
                    log.warning("%s; waiting up to %ds for its lease to end", exc, self._ttl)
                if not self._ever_registered and now - self._taken_since > self._ttl + 1:
                    self.conflict = exc
                    self.conflicted.set()
                    return
                if self._ever_registered:
                    log.error("%s; retrying", exc)
                await asyncio.sleep(0.5)
            except MeshError as exc:
                delays = delays or self._backoff.delays()
                delay = next(delays)
                log.warning("registration: %s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    async def _register(self) -> None:
        self._stop_keeper()
        lease = await self._store.grant(self._ttl)
        try:
            instance = await self._claim(lease)
        except BaseException:
            with contextlib.suppress(MeshError, TimeoutError):
                await asyncio.wait_for(self._store.revoke(lease), 5)
            raise
        self.lease = lease
        self._published_instance = instance
        self._instance_written = time.time()
        self._published = {}
        self._written = {}
        self._ever_registered = True
        self._taken_since = None
        loop = asyncio.get_running_loop()

        def on_lost(lost: int) -> None:  # called from the keeper's thread
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody to tell
                loop.call_soon_threadsafe(self._lost, lost)

        reconnect = getattr(self._store, "reconnect", None)
        self._keeper = LeaseKeeper(
            reconnect if reconnect is not None else (lambda: self._store),
            lease,
            self._ttl,
            on_lost,
            owns_store=reconnect is not None,
        )
        self._keeper.start()
        self.registrations += 1
        log.info("registered under lease %x (ttl %ds)", lease, self._ttl)

    async def _claim(self, lease: int) -> InstanceRecord:
        """Write the instance record under `lease` if the id is free or ours; PodIdTaken if
        another process holds it."""
        instance = replace(
            self._state().instance, incarnation=self.incarnation, updated_at=time.time()
        )
        key = self._keys.instance(instance.pod_id)
        entry = await self._store.get(key)
        compare = Compare.absent(key)
        if entry is not None:
            try:
                holder: InstanceRecord | None = decode(InstanceRecord, key, entry.value)
            except StoreError:
                holder = None  # unreadable: not a live pod's record
            if holder is not None and holder.incarnation != self.incarnation:
                raise PodIdTaken(
                    f"pod id {instance.pod_id!r} is held by another live process (at "
                    f"{holder.address}); give this pod another --pod-id"
                )
            compare = Compare.value_is(key, entry.value)
        result = await self._store.txn([compare], [Put(key, encode(instance), lease)])
        if not result.succeeded:
            raise PodIdTaken(f"pod id {instance.pod_id!r} was claimed by another process")
        return instance

    def _lost(self, lease: int) -> None:
        if lease == self.lease:
            self.lease = 0
            self._registered.clear()
            self._wake.set()

    def _stop_keeper(self) -> None:
        if self._keeper is not None:
            self._keeper.stop()
            self._keeper = None

    async def _publish(self) -> None:
        async with self._publishing:
            await self._publish_state()

    async def _publish_state(self) -> None:
        state = self._state()
        now = time.time()
        ops: list[Operation] = []
        instance = replace(state.instance, incarnation=self.incarnation)
        stale = now - self._instance_written >= self._max_interval
        previous = self._published_instance
        if (
            previous is None
            or _significant(previous) != _significant(instance)
            or (stale and previous != replace(instance, updated_at=previous.updated_at))
        ):
            instance = replace(instance, updated_at=now)
            ops.append(Put(self._keys.instance(instance.pod_id), encode(instance), self.lease))
        wanted = {self._keys.placement(p.model_id, p.pod_id): p for p in state.placements}
        written: dict[str, bytes] = {}
        for key, record in wanted.items():
            old = self._published.get(key)
            if old is None or replace(old, last_used=0.0) != replace(record, last_used=0.0):
                written[key] = encode(record)
                ops.append(Put(key, written[key], self.lease))
        gone = [key for key in self._published if key not in wanted]
        for start in range(0, len(ops), _TXN_OPS):
            await self._store.txn((), ops[start : start + _TXN_OPS])
        for key in gone:
            # Only what this pod wrote and still holds: never a record another process put
            # there since (a router's claim, or another pod's).
            value = self._written.pop(key, None)
            if value is not None:
                await self._store.txn([Compare.value_is(key, value)], [Delete(key)])
        self._written.update(written)
        self.writes += len(ops) + len(gone)
        if any(
            isinstance(op, Put) and op.key == self._keys.instance(instance.pod_id) for op in ops
        ):
            self._published_instance = instance
            self._instance_written = now
        self._published = wanted
        self._registered.set()
