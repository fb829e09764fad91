"""Requests held for a pool with no pod to serve them: scale from zero, seen from the router.

A request for a model whose pool has no live, non-draining pod (the pool scaled to zero, or
every pod is draining) is not failed: the router holds it, publishes the demand in etcd
(mesh.cluster.demand, one record per model under the router's lease) for the pool controller,
which adds a pod, and lets it go on once a pod registers. The rest is the ordinary miss path:
the load is claimed and the model loaded on the new pod, then the request forwarded.

    held = HeldRequests(store, mirror, "/mesh/", "router-1", lease, HoldPolicy(max_held=64))
    try:                                              # one request, on its own task
        await held.wait_for_pod("fraud", deadline)    # returns at once when a pod can take it
        ...                                           # load, forward
        held.answered()
    finally:
        held.finish()

Nothing of this runs on the hit path: the forwarder calls `answered` and `finish` only while
this router holds requests (`count`), and `wait_for_pod` only on a miss.

How it fails: past the client's deadline (or the router's load timeout when the client set
none), DeadlineExceeded (504 on REST); with `max_held` requests already held by this router,
CapacityExhausted at once (RESOURCE_EXHAUSTED, 429 on REST and the OpenAI routes). When etcd
cannot be written the request is held all the same (a pod may come anyway) and the failure is
logged. Cold-start seconds (held -> answered) are observed when a held request is answered.

Issue 14's wait (a miss that finds no pod at all waits up to `vanished_grace` for pods to come
back, mesh.router.core) stays underneath: it covers pods that vanish between this hold and the
load.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import time
from dataclasses import dataclass
from typing import Any

from mesh.cluster.demand import (
    DEFAULT_POOL,
    POOL_LABEL,
    DemandRecord,
    demand_key,
    encode_demand,
    pool_of_pod,
)
from mesh.cluster.mirror import Mirror
from mesh.cluster.records import InstanceRecord, ModelRecord
from mesh.cluster.store import KeyValueStore
from mesh.errors import CapacityExhausted, DeadlineExceeded, MeshError
from mesh.router.metrics import RouterMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HoldPolicy:
    # Requests this router holds at once, all models together; more are refused.
    max_held: int = 256


def pool_of(record: ModelRecord) -> str:
    """The pool a model is served by: its required `pool` label, else the default pool."""
    return record.required_labels.get(POOL_LABEL, DEFAULT_POOL)


def in_pool(instance: InstanceRecord, pool: str) -> bool:
    """Whether a pod serves `pool` now: its `pool` label (none: the default pool), not draining.
    Other labels a model requires are placement's to judge (no pod carries them: the miss
    fails at once, as before), not a reason to hold: no pool controller would add such a pod."""
    return not instance.draining and pool_of_pod(instance) == pool


class _Slot:
    """One request's hold: when it began and what it counts against, until it ends."""

    __slots__ = ("held_at", "model_id", "pool", "record")

    def __init__(self) -> None:
        self.held_at: float | None = None
        self.model_id = ""
        self.pool = ""
        self.record: ModelRecord | None = None


_SLOT: contextvars.ContextVar[_Slot | None] = contextvars.ContextVar("mesh_held", default=None)


class HeldRequests:
    def __init__(
        self,
        store: KeyValueStore,
        mirror: Mirror,
        root: str,
        router_id: str,
        lease: Any,
        policy: HoldPolicy | None = None,
        metrics: RouterMetrics | None = None,
    ) -> None:
        self._store = store
        self._mirror = mirror
        self._root = root
        self._router_id = router_id
        self._lease = lease  # an object with .id: the router's lease
        self.policy = policy or HoldPolicy()
        self._metrics = metrics
        self.count = 0
        self._per_model: collections.Counter[str] = collections.Counter()
        self._since: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._writers: collections.Counter[str] = collections.Counter()  # by model, not done
        self._writes: set[asyncio.Task[None]] = set()

    # -- the request path ----------------------------------------------------------------------

    def needs_hold(self, record: ModelRecord) -> bool:
        """Whether the model's pool has no pod up now (none registered, or all draining)."""
        pool = pool_of(record)
        return not any(in_pool(i, pool) for i in self._mirror.instances.values())

    def answered(self) -> None:
        """The request on this task was answered (a stream: its first response went out): if
        it was held, its cold start is observed and it stops counting as held."""
        slot = _SLOT.get()
        if slot is None or slot.held_at is None:
            return
        if self._metrics is not None:
            self._metrics.cold_start.observe(time.monotonic() - slot.held_at)
        self._release(slot)

    def finish(self) -> None:
        """The request on this task ended, answered or not: it no longer counts as held."""
        slot = _SLOT.get()
        if slot is not None:
            self._release(slot)
            _SLOT.set(None)  # a connection's next request on this task starts clean

    def _release(self, slot: _Slot) -> None:
        if slot.held_at is not None and slot.record is not None:
            self._leave(slot.model_id, slot.pool, slot.record)
        slot.held_at = None
        slot.record = None

    async def wait_for_pod(self, model_id: str, deadline: float) -> None:
        """Return once a pod may take `model_id`: at once when one is registered, else held.

        A held request counts as held (in the queue's bound, the gauge and the demand record)
        until it is answered or fails, not only until a pod registers: the pool controller
        must not take the new pod away while it loads the model for it."""
        record = self._mirror.models.get(model_id)
        if record is None or not self.needs_hold(record):
            return  # an unknown model is the miss path's to refuse
        pool = pool_of(record)
        slot = _SLOT.get()
        if slot is None:  # the request's own: its task's context carries it to the answer
            slot = _Slot()
            _SLOT.set(slot)
        if slot.held_at is None:
            if self.count >= self.policy.max_held:
                raise CapacityExhausted(
                    f"model {model_id!r}: no pod of pool {pool!r} is up and this router "
                    f"already holds {self.count} requests for pods to start (max_held); "
                    "retry later"
                )
            slot.held_at = time.monotonic()
            slot.model_id, slot.pool, slot.record = model_id, pool, record
            self._enter(model_id, pool, record)
        remaining = deadline - time.monotonic()
        log.info(
            "no pod of pool %s can take %s: held up to %.1fs for one to start",
            pool,
            model_id,
            max(remaining, 0),
        )
        try:
            if remaining <= 0:
                raise TimeoutError
            await self._mirror.wait_for(lambda m: not self.needs_hold(record), timeout=remaining)
        except TimeoutError:
            raise DeadlineExceeded(
                f"model {model_id!r}: held {max(remaining, 0):.1f}s and no pod of pool "
                f"{pool!r} started within the deadline"
            ) from None

    # -- bookkeeping and the demand records ----------------------------------------------------

    def _enter(self, model_id: str, pool: str, record: ModelRecord) -> None:
        self.count += 1
        self._per_model[model_id] += 1
        self._since.setdefault(model_id, time.time())
        if self._metrics is not None:
            self._metrics.held.labels(pool).inc()
        if self._per_model[model_id] == 1:
            self._publish(model_id, pool, record)

    def _leave(self, model_id: str, pool: str, record: ModelRecord) -> None:
        self.count -= 1
        self._per_model[model_id] -= 1
        if self._metrics is not None:
            self._metrics.held.labels(pool).dec()
        if not self._per_model[model_id]:
            del self._per_model[model_id]
            self._since.pop(model_id, None)
            self._publish(model_id, pool, record)

    def _publish(self, model_id: str, pool: str, record: ModelRecord) -> None:
        """Bring the model's demand record in line with the requests held, in the background:
        one writer per model at a time, each writing what is held when it runs."""
        self._writers[model_id] += 1
        task = asyncio.create_task(self._write(model_id, pool, record))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, model_id: str, pool: str, record: ModelRecord) -> None:
        lock = self._locks.setdefault(model_id, asyncio.Lock())
        try:
            await self._write_locked(lock, model_id, pool, record)
        finally:
            self._writers[model_id] -= 1
            # The lock goes only with its last writer: one dropped while writers still wait
            # on it (lock.locked() is False between a release and the next waiter's turn)
            # let a new writer run beside them, and an old count could land last.
            if not self._writers[model_id]:
                del self._writers[model_id]
                self._locks.pop(model_id, None)

    async def _write_locked(
        self, lock: asyncio.Lock, model_id: str, pool: str, record: ModelRecord
    ) -> None:
        async with lock:
            held = self._per_model.get(model_id, 0)
            demand = DemandRecord(
                pool,
                model_id,
                self._router_id,
                held,
                record.size_estimate or record.measured_size,
                self._since.get(model_id, time.time()),
            )
            key = demand_key(self._root, demand)
            try:
                if held:
                    lease = int(self._lease.id)
                    if not lease:
                        log.warning("demand for %s not published: no router lease yet", model_id)
                        return
                    await self._store.put(key, encode_demand(demand), lease)
                else:
                    await self._store.delete(key)
            except MeshError as exc:
                log.warning("demand for %s: cannot write %s: %s", model_id, key, exc)

    async def aclose(self) -> None:
        """Wait for the demand writes under way (the lease's revocation removes the rest)."""
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=5)
