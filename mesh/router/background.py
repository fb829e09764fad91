"""Work one router does for the whole mesh, as the elected leader: keep every model's
`min_copies` loaded, and publish the cluster's totals for dashboards.

Only the leader does it, so that two routers never race to add the same copy (the load claim
would stop a double load, but not a double attempt), and so that totals are counted once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from mesh.cluster.election import LeaderElection
from mesh.cluster.records import PlacementState
from mesh.errors import MeshError
from mesh.router.core import Router
from mesh.router.metrics import RouterMetrics

log = logging.getLogger(__name__)


class LeaderWork:
    def __init__(
        self,
        router: Router,
        election: LeaderElection,
        metrics: RouterMetrics | None,
        interval: float = 5.0,
    ) -> None:
        self._router = router
        self._election = election
        self._metrics = metrics
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._election.start()
        self._task = asyncio.create_task(self._run(), name="mesh-leader-work")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._election.aclose()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            if self._metrics is not None:
                self._metrics.leader.set(1 if self._election.is_leader else 0)
            if not self._election.is_leader:
                continue
            try:
                self.publish_totals()
                await self.keep_min_copies()
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

    async def keep_min_copies(self) -> None:
        """Load one more copy of each model below its min_copies (one per model per round)."""
        mirror = self._router.mirror
        for model_id, record in list(mirror.models.items()):
            if record.min_copies <= 0:
                continue
            copies = self._router.known_copies(model_id)
            if len(copies) >= record.min_copies:
                continue
            try:
                await self._router.add_copy(model_id, exclude=sorted(copies))
            except MeshError as exc:
                log.warning("min_copies of %s: %s", model_id, exc)
