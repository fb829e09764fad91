"""The leader's job: hand off draining pods' models.

As soon as the mirror shows a pod draining, the leader loads each model that pod holds on
another pod, most recently used first (mesh.placement.handoff), a few at a time, so the pod can
leave within its grace period without a cold miss for what is hot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from mesh.cluster.mirror import Change
from mesh.errors import MeshError
from mesh.placement.handoff import plan_handoff
from mesh.router.jobs.view import JobsView

log = logging.getLogger("mesh.router.background")


class HandOff:
    def __init__(
        self, router: JobsView, is_leader: Callable[[], bool], interval: float, concurrency: int
    ) -> None:
        self._router = router
        self._is_leader = is_leader
        self._interval = interval
        self._draining_seen = asyncio.Event()
        self._handing_off: set[str] = set()
        self._slots = asyncio.Semaphore(concurrency)
        self.tasks: set[asyncio.Task[None]] = set()

    def on_change(self, changes: list[Change]) -> None:
        """The mirror's subscriber: wake up as soon as a pod is seen draining."""
        if any(
            c.kind == "instance" and c.record is not None and c.record.draining for c in changes
        ):
            self._draining_seen.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel.
                async with asyncio.timeout(self._interval):
                    await self._draining_seen.wait()
            self._draining_seen.clear()
            if not self._is_leader():
                continue
            try:
                self.start()
            except Exception:
                log.exception("hand-off of draining pods failed")

    def start(self) -> list[str]:
        """Start loading elsewhere the models draining pods hold (MRU first); those started."""
        mirror = self._router.mirror
        if not any(i.draining for i in mirror.instances.values()):
            return []
        snapshot = self._router.copies.snapshot()
        started = [m for m in plan_handoff(snapshot) if m not in self._handing_off]
        for model_id in started:
            self._handing_off.add(model_id)
            task = asyncio.create_task(self._hand_off(model_id), name=f"mesh-handoff-{model_id}")
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return started

    async def _hand_off(self, model_id: str) -> None:
        # Tasks start in plan order and the semaphore wakes waiters in order: MRU loads first.
        try:
            async with self._slots:
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
