"""The leader's job: carry on vmodel transitions whose router went away.

A transition runs as a task in the router that received SetVModel; if that router dies, its
record keeps `previous` and clients keep the old model. The leader loads the target (one load
per mesh: the claim joins any load already on its way) and switches once a copy is loaded, with
a compare on the record so that a newer SetVModel wins.
"""

from __future__ import annotations

import asyncio
import logging

from mesh.cluster.codec import encode
from mesh.cluster.records import VModelRecord
from mesh.cluster.store import Compare, Put
from mesh.errors import MeshError
from mesh.router.jobs.view import JobsView
from mesh.router.jobs.warn import WarnOnce

log = logging.getLogger("mesh.router.background")


class VModelTransitions:
    def __init__(self, router: JobsView) -> None:
        self._router = router
        self._stalled = WarnOnce("a vmodel's target does not load:")
        self.loads: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        router, mirror = self._router, self._router.mirror
        self.loads = {m: t for m, t in self.loads.items() if not t.done()}
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
            task = self.loads.get(record.target)
            if task is None or task.done():
                task = asyncio.create_task(self._load_target(vmodel_id, record.target))
                self.loads[record.target] = task

    async def _load_target(self, vmodel_id: str, target: str) -> None:
        try:
            await self._router.ensure_loaded(target)
        except MeshError as exc:
            self._stalled.warn(target, f"{exc} (vmodel {vmodel_id})")
