"""Every router's job: copy scaling from the traffic it sees.

This router's requests per model are folded into each model's load (mesh.placement.copies
decides, with hysteresis); a copy is added where the load per copy stays high (the load claim
keeps two routers from loading the same copy twice), and the leader alone removes idle extra
copies.

A known limit: each router judges load from its own traffic, so with several routers a copy is
added when one router's share is hot, and removed when the leader's share has been idle for
`remove_after` (5 minutes by default), even if another router still uses it; it would then be
loaded again on demand.
"""

from __future__ import annotations

import logging
import random

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
from mesh.placement.snapshot import ModelRequirements
from mesh.router.jobs.view import JobsView
from mesh.router.jobs.warn import WarnOnce

log = logging.getLogger("mesh.router.background")


class CopyScaling:
    def __init__(self, router: JobsView, policy: CopyPolicy = DEFAULT_COPY_POLICY) -> None:
        self._router = router
        self._policy = policy
        self._loads: dict[str, LoadState] = {}
        self._rng = random.Random()
        self._no_copy = WarnOnce("no more copies of")

    async def run(self, now: float, leader: bool) -> None:
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
                self._policy,
            )  # fmt: skip
            self._loads[model_id] = state
            requirements = ModelRequirements.from_record(record)
            decision = decide_copies(requirements, copies, state, now, self._policy, limit=limit)
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
        pod = self._router.pod_client(pod_id, instance.address, instance.data_address)
        await pod.unload(model_id, timeout=60)
