"""The router's core: resolve a name, forward to a copy, and on a miss get one loaded.

The request path reads only the mirror. A hit costs a dict lookup, a choice between copies
(power of two choices) and one forward of the request's bytes. A miss is the single-flight
loader's (mesh.router.loader: placement, the load claim of mesh.cluster.claims, the pod told to
load); where copies are is the copy view's (mesh.router.copies).

A forward that fails with NOT_FOUND or UNAVAILABLE (a stale mirror, a dead pod) is retried on
another copy or a fresh placement, with an exclude list and a bounded number of attempts.
Every wait is bounded by the client's deadline.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

from mesh.cluster.claims import LoadClaims
from mesh.cluster.codec import Keys
from mesh.cluster.mirror import Mirror
from mesh.cluster.records import InstanceRecord
from mesh.cluster.store import KeyValueStore
from mesh.errors import ModelNotFound
from mesh.placement.failures import FailureLog, FailurePolicy
from mesh.router.copies import CopyView
from mesh.router.forward import Forwarder
from mesh.router.held import HeldRequests
from mesh.router.loader import Loader
from mesh.router.metrics import RouterMetrics
from mesh.router.overview import Activity
from mesh.router.pods import PodPool
from mesh.router.policy import RouterPolicy
from mesh.router.transport import PodTransport
from mesh.router.vanished import VanishedPods

log = logging.getLogger(__name__)


class Router:
    def __init__(
        self,
        store: KeyValueStore,
        mirror: Mirror,
        keys: Keys,
        pool: PodPool,
        *,
        router_id: str,
        lease: Any,
        policy: RouterPolicy | None = None,
        rng: random.Random | None = None,
        metrics: RouterMetrics | None = None,
        held: HeldRequests | None = None,
    ) -> None:
        self._store = store
        self.mirror = mirror
        self._keys = keys
        self._pool = pool
        self.router_id = router_id
        self.policy = policy or RouterPolicy()
        self._rng = rng or random.Random()
        self._metrics = metrics
        self.failures = FailureLog(
            FailurePolicy(ttl=self.policy.failure_ttl, max_attempts=self.policy.failure_attempts)
        )
        self.vanished = VanishedPods(self.policy.vanished_grace)
        # Where copies are (holders, fresh loads) and the one snapshot of the mirror.
        self.copies = CopyView(mirror, pool, self.vanished)
        # One load per mesh: the claim recipe (mesh.cluster.claims), under this router's lease.
        self.claims = LoadClaims(store, keys, router_id, lease)
        # Loads, evictions, misses and failures over the last minutes (mesh.router.overview).
        self.activity = Activity()
        # The miss path: single-flight loads, placement, the claim, the pod told to load.
        self.loader = Loader(
            store, mirror, keys, pool, self.copies, self.claims, self.failures, self.activity,
            self.policy, self._rng, metrics,
        )  # fmt: skip
        # The forward with its retries, and the request counts per model.
        # Requests for a pool with no pod wait there for one to start (scale from zero).
        self.held = held
        self.forwarder = Forwarder(pool, self.copies, self.loader, self.policy, metrics, held)
        # `infer(data, model_id, timeout)`: the hit path, bound here so that it costs no frame
        # of the router's own (mesh.router.forward.Forwarder.infer).
        self.infer = self.forwarder.infer

    @property
    def store(self) -> KeyValueStore:
        return self._store

    @property
    def keys(self) -> Keys:
        return self._keys

    def forget_copy(self, model_id: str, pod_id: str) -> None:
        """The copy on `pod_id` was unloaded: stop counting it before the mirror shows it."""
        self.copies.forget(model_id, pod_id)

    def observe(self, changes: Sequence[Any]) -> list[str]:
        """Follow the mirror (a subscriber): the pods gone for good, whose channels may close.

        A model whose registration changed (fixed files, another format, anything but the
        size a copy measured) or went away starts with a clean failure record.
        """
        for change in changes:
            if change.kind != "model":
                continue
            self.loader.observe_model(change.previous, change.record)
            old, new = change.previous, change.record
            if (
                old is None
                or new is None
                or dataclasses.replace(old, measured_size=0, measured_sizes={}, artifact_bytes=0)
                != dataclasses.replace(new, measured_size=0, measured_sizes={}, artifact_bytes=0)
            ):
                self.failures.clear(change.key)
        return self.vanished.observe(changes, self.mirror.instances)

    @property
    def loads_started(self) -> int:
        return self.loader.loads_started

    def instance(self, pod_id: str) -> InstanceRecord | None:
        """A pod's record: the mirror's, else the last one of a pod that vanished recently."""
        return self.copies.instance(pod_id)

    # -- names ---------------------------------------------------------------------------------

    def resolve(self, name: str) -> str:
        """The model a name stands for: a vmodel's active model, or the model itself."""
        vmodel = self.mirror.vmodels.get(name)
        if vmodel is not None:
            return vmodel.active
        if name in self.mirror.models:
            return name
        raise ModelNotFound(f"model {name!r} is not registered in this mesh")

    # -- the request path ----------------------------------------------------------------------

    def pod_client(self, pod_id: str, address: str, data_address: str = "") -> PodTransport:
        return self._pool.client(pod_id, address, data_address)

    def holders(self, model_id: str, exclude: Sequence[str] = ()) -> list[PodTransport]:
        """Pods serving a loaded copy, not draining, not excluded (mesh.router.copies)."""
        return self.copies.holders(model_id, exclude)

    def known_copies(self, model_id: str) -> set[str]:
        """Pods that hold, load or just loaded the model, as far as this router knows."""
        return self.copies.known_copies(model_id)

    def loading_elsewhere(self, model_id: str, exclude: Sequence[str] = ()) -> bool:
        """Whether a live pod is loading the model now (another router's claim, or a copy)."""
        return self.copies.loading_elsewhere(model_id, exclude)

    def stream(self, data: bytes, model_id: str, timeout: float | None) -> AsyncIterator[bytes]:
        """One ModelStreamInfer request, forwarded to a copy: the pod's responses as they come."""
        return self.forwarder.stream(data, model_id, timeout)

    @property
    def requests(self) -> collections.Counter[str]:
        """Requests per model since copy scaling last took them (mesh.router.background)."""
        return self.forwarder.requests

    @requests.setter
    def requests(self, counts: collections.Counter[str]) -> None:
        self.forwarder.requests = counts

    @property
    def in_flight(self) -> collections.Counter[str]:
        """Requests in flight per model."""
        return self.forwarder.in_flight

    # -- cache misses (mesh.router.loader) -----------------------------------------------------

    async def ensure_loaded(
        self, model_id: str, exclude: Sequence[str] = (), deadline: float | None = None
    ) -> str:
        """A pod holding a loaded copy of `model_id`, loading one if there is none."""
        return await self.loader.ensure_loaded(model_id, exclude, deadline)

    async def add_copy_for(self, model_id: str, exclude: Sequence[str], deadline: float) -> str:
        """A loaded copy on a pod outside `exclude`, loading one if needed, by `deadline`."""
        return await self.loader.add_copy_for(model_id, exclude, deadline)

    async def add_copy(self, model_id: str, exclude: Sequence[str]) -> str:
        """Load another copy on a pod not in `exclude` (those holding one already)."""
        return await self.loader.add_copy(model_id, exclude)
