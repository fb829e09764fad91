"""The router's view of where copies are: holders, fresh loads, and the one snapshot of the mirror.

Reads only the mirror (and what this router knows before the mirror does): the pods holding a
loaded copy of a model, not draining, including a copy this router has just loaded whose pod's
own record has not reached the mirror yet ("fresh", for `FRESH_FOR` seconds), and the pods whose
records vanished with an expired lease but may serve on (mesh.router.vanished). `snapshot()` is
the one way the router's parts (the miss path, the leader's jobs) turn the mirror into the
placement engine's view.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence

from mesh.cluster.mirror import Mirror
from mesh.cluster.records import InstanceRecord, ModelRecord, PlacementRecord, PlacementState
from mesh.placement.snapshot import Snapshot
from mesh.router.pods import PodPool
from mesh.router.transport import PodTransport
from mesh.router.vanished import VanishedPods

log = logging.getLogger(__name__)

# How long a copy this router loaded counts as loaded before the mirror shows it.
FRESH_FOR = 10.0


class CopyView:
    def __init__(self, mirror: Mirror, pool: PodPool, vanished: VanishedPods) -> None:
        self.mirror = mirror
        self._pool = pool
        self.vanished = vanished
        self._fresh: dict[str, dict[str, float]] = {}
        # (model, pod) -> the placement record that still showed a copy when the pod answered
        # NOT_FOUND: that record is not believed until the mirror replaces it.
        self._gone: dict[tuple[str, str], PlacementRecord] = {}

    def holders(self, model_id: str, exclude: Sequence[str] = ()) -> list[PodTransport]:
        """Pods serving a loaded copy, not draining, not excluded.

        A copy this router has just loaded counts before the pod's own record of it reaches
        the mirror (the pod publishes within a fraction of a second; requests come sooner).
        """
        copies = self.mirror.placements.get(model_id, {})
        pod_ids = [p for p, rec in copies.items() if rec.state is PlacementState.LOADED]
        if self._gone:
            pod_ids = [p for p in pod_ids if not self._disbelieved(model_id, p, copies[p])]
        fresh = self._fresh.get(model_id)
        if fresh:
            now = time.monotonic()
            for pod_id, at in list(fresh.items()):
                if now - at > FRESH_FOR or pod_id in pod_ids:
                    del fresh[pod_id]
                else:
                    pod_ids.append(pod_id)
        found = []
        for pod_id in pod_ids:
            if pod_id in exclude:
                continue
            instance = self.mirror.instances.get(pod_id)
            if instance is None or instance.draining:
                continue
            found.append(self._pool.client(pod_id, instance.address, instance.data_address))
        if not found and self.vanished.grace > 0:
            for pod_id in self.vanished.expire():
                self._pool.forget(pod_id)
            # Its records vanished with an expired lease, but the pod may serve on: better a
            # try (a failure drops it) than a load on a pod that may not exist either.
            for instance in self.vanished.holders(model_id):
                if instance.pod_id not in exclude:
                    found.append(
                        self._pool.client(instance.pod_id, instance.address, instance.data_address)
                    )
        return found

    def first_holder(self, model_id: str, exclude: Sequence[str] = ()) -> str:
        """A pod holding a loaded copy, or "" if none does: the "copy ready" predicate."""
        copies = self.holders(model_id, exclude)
        return copies[0].pod_id if copies else ""

    def known_copies(self, model_id: str) -> set[str]:
        """Pods that hold, load or just loaded the model, as far as this router knows."""
        return set(self.mirror.placements.get(model_id, {})) | set(self._fresh.get(model_id, {}))

    def loading_elsewhere(self, model_id: str, exclude: Sequence[str] = ()) -> bool:
        """Whether a live pod is loading the model now (another router's claim, or a copy)."""
        for pod_id, rec in self.mirror.placements.get(model_id, {}).items():
            if (
                rec.state is PlacementState.LOADING
                and pod_id not in exclude
                and pod_id in self.mirror.instances
            ):
                return True
        return False

    def loaded_here(self, model_id: str, pod_id: str) -> None:
        """This router has just loaded a copy on `pod_id`: count it until the mirror shows it."""
        self._fresh.setdefault(model_id, {})[pod_id] = time.monotonic()
        self._gone.pop((model_id, pod_id), None)

    def not_here(self, model_id: str, pod_id: str) -> None:
        """`pod_id` answered that it holds no copy (evicted since its record was read): its
        record of one is not believed until the mirror brings another, so that every request
        does not find out again (under churn the pod's delete may take a while to arrive)."""
        self.forget(model_id, pod_id)
        record = self.mirror.placements.get(model_id, {}).get(pod_id)
        if record is not None:
            self._gone[(model_id, pod_id)] = record

    def disbelieved(self, model_id: str) -> list[str]:
        """Pods whose record shows a copy of `model_id` that they said they do not hold."""
        if not self._gone:
            return []
        copies = self.mirror.placements.get(model_id, {})
        return [p for p, rec in copies.items() if self._disbelieved(model_id, p, rec)]

    def _disbelieved(self, model_id: str, pod_id: str, record: PlacementRecord) -> bool:
        gone = self._gone.get((model_id, pod_id))
        if gone is None:
            return False
        if gone is record:
            return True
        del self._gone[(model_id, pod_id)]  # the mirror has moved on: believe it again
        return False

    def forget(self, model_id: str, pod_id: str) -> None:
        """The copy on `pod_id` is gone (unloaded, evicted): stop counting it."""
        fresh = self._fresh.get(model_id)
        if fresh is not None:
            fresh.pop(pod_id, None)
            if not fresh:
                del self._fresh[model_id]

    def instance(self, pod_id: str) -> InstanceRecord | None:
        """A pod's record: the mirror's, else the last one of a pod that vanished recently."""
        instance = self.mirror.instances.get(pod_id)
        return instance if instance is not None else self.vanished.instance(pod_id)

    def client(self, pod_id: str) -> PodTransport | None:
        """The client of a pod the mirror (or the vanished list) knows; None if none does."""
        instance = self.instance(pod_id)
        return (
            None
            if instance is None
            else self._pool.client(pod_id, instance.address, instance.data_address)
        )

    def unreachable(self, pod_id: str) -> None:
        """A call to `pod_id` found it gone: a pod whose records vanished is forgotten."""
        if self.vanished.drop(pod_id):
            log.info("pod %s, whose records vanished, is unreachable: forgotten", pod_id)
            self._pool.forget(pod_id)

    def snapshot(
        self,
        records: Iterable[ModelRecord] | None = None,
        typical: Mapping[str, int] | None = None,
    ) -> Snapshot:
        """The placement engine's view of the mirror: every pod and placement, and the records
        of `records` (every registered model when None), sized by `typical` per format."""
        mirror = self.mirror
        return Snapshot.from_records(
            mirror.instances.values(),
            (p for pods in mirror.placements.values() for p in pods.values()),
            mirror.models.values() if records is None else records,
            typical=typical,
        )
