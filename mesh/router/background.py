"""Background work of the routers.

Every router adds a copy of a model whose load per copy stays high in the traffic it sees
(mesh.placement.copies decides, with hysteresis; the load claim keeps two routers from loading
the same copy twice). The elected leader alone removes idle extra copies, keeps every model's
`min_copies` loaded, expires failure records and publishes the cluster's totals (counted once),
and hands off draining pods' models: as soon as the mirror shows a pod draining, it loads each
model that pod holds on another pod, most recently used first (mesh.placement.handoff), a few
at a time, so the pod can leave within its grace period without a cold miss for what is hot.

A known limit: each router judges load from its own traffic, so with several routers a copy is
added when one router's share is hot, and removed when the leader's share has been idle for
`remove_after` (5 minutes by default), even if another router still uses it; it would then be
loaded again on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Collection

from mesh.cluster.codec import encode
from mesh.cluster.election import LeaderElection
from mesh.cluster.mirror import Change
from mesh.cluster.records import PlacementState, VModelRecord
from mesh.cluster.store import Compare, Put
from mesh.errors import MeshError
from mesh.placement.copies import (
    DEFAULT_COPY_POLICY,
    CopyAction,
    CopyPolicy,
    LoadState,
    choose_copy_to_remove,
    decide_copies,
    observe,
)
from mesh.placement.handoff import plan_handoff
from mesh.placement.snapshot import ModelRequirements
from mesh.router.core import Router
from mesh.router.metrics import RouterMetrics

log = logging.getLogger(__name__)


class WarnOnce:
    """A warning per model that repeats every round is logged when its message changes only."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._last: dict[str, str] = {}

    def warn(self, model_id: str, message: str) -> None:
        if self._last.get(model_id) != message:
            log.warning("%s %s: %s", self._what, model_id, message)
            self._last[model_id] = message

    def clear(self, model_id: str) -> None:
        self._last.pop(model_id, None)

    def keep_only(self, model_ids: Collection[str]) -> None:
        for model_id in set(self._last) - set(model_ids):
            del self._last[model_id]


class LeaderWork:
    def __init__(
        self,
        router: Router,
        election: LeaderElection,
        metrics: RouterMetrics | None,
        interval: float = 5.0,
        copy_policy: CopyPolicy = DEFAULT_COPY_POLICY,
        handoff_concurrency: int = 4,
    ) -> None:
        self._router = router
        self._election = election
        self._metrics = metrics
        self._interval = interval
        self._copy_policy = copy_policy
        self._loads: dict[str, LoadState] = {}
        self._rng = random.Random()
        # The last reason each model could not get its min_copies, logged once, not each round.
        self._short = WarnOnce("min_copies of")
        self._no_copy = WarnOnce("no more copies of")
        self._stalled = WarnOnce("a vmodel's target does not load:")
        self._transition_loads: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._handoff_task: asyncio.Task[None] | None = None
        self._draining_seen = asyncio.Event()
        self._handing_off: set[str] = set()
        self._handoff_slots = asyncio.Semaphore(handoff_concurrency)
        self._handoffs: set[asyncio.Task[None]] = set()
        self._unsubscribe: Callable[[], None] | None = None

    async def start(self) -> None:
        await self._election.start()
        self._unsubscribe = self._router.mirror.subscribe(self._on_change)
        self._task = asyncio.create_task(self._run(), name="mesh-leader-work")
        self._handoff_task = asyncio.create_task(self._run_handoff(), name="mesh-handoff")

    async def aclose(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        tasks = [t for t in (self._task, self._handoff_task) if t is not None] + list(
            self._handoffs
        )
        tasks += [t for t in self._transition_loads.values() if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=5)
            if pending:
                log.warning("%d background tasks did not stop within 5 s", len(pending))
        await self._election.aclose()

    # -- hand-off of draining pods' models --------------------------------------------------

    def _on_change(self, changes: list[Change]) -> None:
        if any(
            c.kind == "instance" and c.record is not None and c.record.draining for c in changes
        ):
            self._draining_seen.set()

    async def _run_handoff(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel.
                async with asyncio.timeout(self._interval):
                    await self._draining_seen.wait()
            self._draining_seen.clear()
            if not self._election.is_leader:
                continue
            try:
                self.start_handoffs()
            except Exception:
                log.exception("hand-off of draining pods failed")

    def start_handoffs(self) -> list[str]:
        """Start loading elsewhere the models draining pods hold (MRU first); those started."""
        mirror = self._router.mirror
        if not any(i.draining for i in mirror.instances.values()):
            return []
        snapshot = self._router.copies.snapshot()
        started = [m for m in plan_handoff(snapshot) if m not in self._handing_off]
        for model_id in started:
            self._handing_off.add(model_id)
            task = asyncio.create_task(self._hand_off(model_id), name=f"mesh-handoff-{model_id}")
            self._handoffs.add(task)
            task.add_done_callback(self._handoffs.discard)
        return started

    async def _hand_off(self, model_id: str) -> None:
        # Tasks start in plan order and the semaphore wakes waiters in order: MRU loads first.
        try:
            async with self._handoff_slots:
                if self._router.holders(model_id):
                    return  # a request loaded it meanwhile (holders skip draining pods)
                pod_id = await self._router.add_copy(
                    model_id, exclude=sorted(self._router.known_copies(model_id))
                )
                log.info("handed off %s from a draining pod to %s", model_id, pod_id)
        except MeshError as exc:
            log.warning("hand-off of %s: %s", model_id, exc)
        finally:
            self._handing_off.discard(model_id)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            leader = self._election.is_leader
            if self._metrics is not None:
                self._metrics.leader.set(1 if leader else 0)
            try:
                await self.scale_copies(time.time(), leader)
            except MeshError as exc:
                log.warning("copy scaling: %s", exc)
            except Exception:
                log.exception("copy scaling failed")
            if not leader:
                continue
            try:
                self.publish_totals()
                await self.keep_min_copies()
                await self.finish_transitions()
                self._router.failures.expire(time.time())
            except MeshError as exc:
                log.warning("leader work: %s", exc)
            except Exception:
                log.exception("leader work failed")

    def publish_totals(self) -> None:
        if self._metrics is None:
            return
        mirror = self._router.mirror
        loaded = [
            model_id
            for model_id, copies in mirror.placements.items()
            if any(p.state is PlacementState.LOADED for p in copies.values())
        ]
        m = self._metrics
        m.models_registered.set(len(mirror.models))
        m.models_loaded.set(len(loaded))
        m.copies.set(
            sum(
                1
                for copies in mirror.placements.values()
                for p in copies.values()
                if p.state is PlacementState.LOADED
            )
        )
        m.pods.set(len(mirror.instances))
        m.capacity.set(sum(i.capacity for i in mirror.instances.values()))
        m.used.set(sum(i.used for i in mirror.instances.values()))
        oldest = min((i.lru_time for i in mirror.instances.values() if i.lru_time > 0), default=0)
        m.lru_age.set(max(time.time() - oldest, 0.0) if oldest else 0.0)
        m.models_failed.set(
            sum(
                1
                for copies in mirror.placements.values()
                if any(p.state is PlacementState.FAILED for p in copies.values())
            )
        )

    async def finish_transitions(self) -> None:
        """Carry on vmodel transitions whose router went away: load the target, then switch.

        A transition runs as a task in the router that received SetVModel; if that router
        dies, its record keeps `previous` and clients keep the old model. The leader loads the
        target (one load per mesh: the claim joins any load already on its way) and switches
        once a copy is loaded, with a compare on the record so that a newer SetVModel wins.
        """
        router, mirror = self._router, self._router.mirror
        self._transition_loads = {m: t for m, t in self._transition_loads.items() if not t.done()}
        for vmodel_id, record in list(mirror.vmodels.items()):
            if not record.previous or record.target not in mirror.models:
                continue
            if router.holders(record.target):
                key = router.keys.vmodel(vmodel_id)
                switched = await router.store.txn(
                    [Compare.value_is(key, encode(record))],
                    [Put(key, encode(VModelRecord(vmodel_id, record.target)))],
                )
                if switched.succeeded:
                    log.info("vmodel %s switched to %s", vmodel_id, record.target)
                continue
            task = self._transition_loads.get(record.target)
            if task is None or task.done():
                task = asyncio.create_task(self._load_target(vmodel_id, record.target))
                self._transition_loads[record.target] = task

    async def _load_target(self, vmodel_id: str, target: str) -> None:
        try:
            await self._router.ensure_loaded(target)
        except MeshError as exc:
            self._stalled.warn(target, f"{exc} (vmodel {vmodel_id})")

    async def keep_min_copies(self) -> None:
        """Load one more copy of each model below its min_copies (one per model per round)."""
        mirror = self._router.mirror
        for model_id, record in list(mirror.models.items()):
            if record.min_copies <= 0:
                continue
            copies = self._router.known_copies(model_id)
            if len(copies) >= record.min_copies:
                self._short.clear(model_id)
                continue
            try:
                await self._router.add_copy(model_id, exclude=sorted(copies))
            except MeshError as exc:
                self._short.warn(model_id, str(exc))
            else:
                self._short.clear(model_id)
        self._short.keep_only(mirror.models)

    async def scale_copies(self, now: float, leader: bool) -> None:
        """Fold this router's traffic into each model's load; add or (leader) remove a copy."""
        router, mirror = self._router, self._router.mirror
        counts, router.requests = router.requests, type(router.requests)()
        limit = len(mirror.instances)
        for model_id in set(counts) | set(self._loads):
            record = mirror.models.get(model_id)
            if record is None:
                self._loads.pop(model_id, None)
                self._no_copy.clear(model_id)
                continue
            copies = len(router.holders(model_id))
            previous = self._loads.get(model_id) or LoadState(at=now, copies=copies)
            state = observe(
                previous, counts[model_id], router.in_flight[model_id], copies, now,
                self._copy_policy,
            )  # fmt: skip
            self._loads[model_id] = state
            requirements = ModelRequirements.from_record(record)
            decision = decide_copies(
                requirements, copies, state, now, self._copy_policy, limit=limit
            )
            if decision.action is CopyAction.ADD:
                log.info("adding a copy of %s: %s", model_id, decision.reason)
                try:
                    await router.add_copy(model_id, exclude=sorted(router.known_copies(model_id)))
                except MeshError as exc:
                    # One model with no room for a copy must not stop the others' scaling.
                    self._no_copy.warn(model_id, str(exc))
                else:
                    self._no_copy.clear(model_id)
            elif decision.action is CopyAction.REMOVE and leader:
                await self._remove_copy(model_id, requirements, decision.reason)
            elif state.rate < 1e-3 and not state.in_flight and copies <= 1:
                del self._loads[model_id]  # forgotten until it sees traffic again

    async def _remove_copy(
        self, model_id: str, requirements: ModelRequirements, reason: str
    ) -> None:
        mirror = self._router.mirror
        snapshot = self._router.copies.snapshot((mirror.models[model_id],))
        pod_id = choose_copy_to_remove(snapshot, requirements, self._rng)
        instance = mirror.instances.get(pod_id) if pod_id else None
        if pod_id is None or instance is None:
            return
        log.info("removing the copy of %s on %s: %s", model_id, pod_id, reason)
        pod = self._router.pod_client(pod_id, instance.address)
        await pod.unload(model_id, timeout=60)
