"""Pods whose records vanished from the mirror, kept routable for a grace period.

A pod's instance and placement records live under its lease. When etcd stalls past the lease's
TTL (a stopped or partitioned etcd, a long election) the lease expires on etcd's side although
the pod never stopped serving; its records vanish from every router's mirror at once, and until
the pod registers again (as soon as etcd answers it) a router would find no copy of anything.
So a router remembers, for `grace` seconds (about one lease TTL), the last record of a pod that
vanished without draining and the models it held loaded, and keeps sending those models' requests
to it. The memory ends when the pod's records come back, when a request to it fails as
unreachable (`drop`), or when the grace runs out.

Pure bookkeeping: the caller passes the mirror's changes and the live instances in; the clock is
injected.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh.cluster.records import InstanceRecord, PlacementRecord, PlacementState

log = logging.getLogger(__name__)


@dataclass
class _Vanished:
    instance: InstanceRecord
    since: float
    models: set[str] = field(default_factory=set)


class VanishedPods:
    """>>> vanished = VanishedPods(grace=10)
    >>> vanished.observe(changes, mirror.instances)  # from a mirror subscriber
    >>> vanished.holders("mlp")                        # InstanceRecords still worth trying"""

    def __init__(self, grace: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace = grace
        self._clock = clock
        self._pods: dict[str, _Vanished] = {}

    def __contains__(self, pod_id: object) -> bool:
        return pod_id in self._pods

    def observe(self, changes: Iterable[Any], live: Mapping[str, InstanceRecord]) -> list[str]:
        """Follow the mirror's changes; the pods whose channels may be closed now (gone for
        good: drained, grace over, or no grace at all)."""
        gone: list[str] = []
        changes = list(changes)
        now = self._clock()
        for change in changes:
            if change.kind != "instance":
                continue
            if change.record is not None:
                self._pods.pop(change.key, None)  # registered again
            elif self.grace > 0 and change.previous is not None and not change.previous.draining:
                self._pods[change.key] = _Vanished(change.previous, now)
            else:
                self._pods.pop(change.key, None)
                gone.append(change.key)
        for change in changes:
            if change.kind != "placement" or change.record is not None:
                continue
            previous = change.previous
            if not isinstance(previous, PlacementRecord):
                continue
            entry = self._pods.get(previous.pod_id)
            if (
                entry is not None
                and previous.pod_id not in live
                and previous.state is PlacementState.LOADED
            ):
                entry.models.add(previous.model_id)
        for change in changes:
            if change.kind == "instance" and change.record is None and change.key in self._pods:
                entry = self._pods[change.key]
                log.info(
                    "pod %s's records vanished without draining: still sent requests for %d "
                    "models for %.0fs (%s)", change.key, len(entry.models), self.grace,
                    ", ".join(sorted(entry.models)[:5]),
                )  # fmt: skip
        return gone + self.expire()

    def expire(self) -> list[str]:
        """Forget the pods whose grace ran out; their ids."""
        now = self._clock()
        over = [p for p, v in self._pods.items() if now - v.since >= self.grace]
        for pod_id in over:
            del self._pods[pod_id]
        return over

    def holders(self, model_id: str) -> list[InstanceRecord]:
        now = self._clock()
        return [
            v.instance
            for v in self._pods.values()
            if model_id in v.models and now - v.since < self.grace
        ]

    def instance(self, pod_id: str) -> InstanceRecord | None:
        entry = self._pods.get(pod_id)
        if entry is None or self._clock() - entry.since >= self.grace:
            return None
        return entry.instance

    def drop(self, pod_id: str) -> bool:
        """A request to the pod failed as unreachable: it is gone, not just unregistered."""
        return self._pods.pop(pod_id, None) is not None

    def pods(self) -> list[str]:
        return sorted(self._pods)
