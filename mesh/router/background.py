"""Background work of the routers: the leader's jobs, each in a module of its own, run here.

Every router scales copies from the traffic it sees (mesh.router.jobs.scaling: adds a copy of a
model whose load per copy stays high; the leader alone removes idle extra copies). The elected
leader alone also
- keeps every model's `min_copies` loaded (mesh.router.jobs.min_copies),
- carries on vmodel transitions whose router went away (mesh.router.jobs.transitions),
- expires failure records and publishes the cluster's totals, counted once
  (mesh.router.jobs.totals),
- hands off draining pods' models (mesh.router.jobs.handoff): as soon as the mirror shows a pod
  draining, it loads each model that pod holds on another pod, most recently used first, a few
  at a time, so the pod can leave within its grace period without a cold miss for what is hot.

`LeaderWork` runs the rounds (every `interval` seconds) and the hand-off's own loop, which
wakes as soon as a pod is seen draining.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from mesh.cluster.election import LeaderElection
from mesh.errors import MeshError
from mesh.placement.copies import DEFAULT_COPY_POLICY, CopyPolicy
from mesh.router.core import Router
from mesh.router.jobs.handoff import HandOff
from mesh.router.jobs.min_copies import MinCopies
from mesh.router.jobs.scaling import CopyScaling
from mesh.router.jobs.totals import publish_totals
from mesh.router.jobs.transitions import VModelTransitions
from mesh.router.jobs.warn import WarnOnce
from mesh.router.metrics import RouterMetrics

__all__ = ["LeaderWork", "WarnOnce"]

log = logging.getLogger(__name__)


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
        self.scaling = CopyScaling(router, copy_policy)
        self.min_copies = MinCopies(router)
        self.transitions = VModelTransitions(router)
        self.handoff = HandOff(router, lambda: election.is_leader, interval, handoff_concurrency)
        self._task: asyncio.Task[None] | None = None
        self._handoff_task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None

    async def start(self) -> None:
        await self._election.start()
        self._unsubscribe = self._router.mirror.subscribe(self.handoff.on_change)
        self._task = asyncio.create_task(self._run(), name="mesh-leader-work")
        self._handoff_task = asyncio.create_task(self.handoff.run(), name="mesh-handoff")

    async def aclose(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        tasks = [t for t in (self._task, self._handoff_task) if t is not None] + list(
            self.handoff.tasks
        )
        tasks += [t for t in self.transitions.loads.values() if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=5)
            if pending:
                log.warning("%d background tasks did not stop within 5 s", len(pending))
        await self._election.aclose()

    def start_handoffs(self) -> list[str]:
        """Start loading elsewhere the models draining pods hold (MRU first); those started."""
        return self.handoff.start()

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
        if self._metrics is not None:
            publish_totals(self._router.mirror, self._metrics)

    async def finish_transitions(self) -> None:
        """Carry on vmodel transitions whose router went away (mesh.router.jobs.transitions)."""
        await self.transitions.run()

    async def keep_min_copies(self) -> None:
        """Load one more copy of each model below its min_copies (one per model per round)."""
        await self.min_copies.run()

    async def scale_copies(self, now: float, leader: bool) -> None:
        """Fold this router's traffic into each model's load; add or (leader) remove a copy."""
        await self.scaling.run(now, leader)
