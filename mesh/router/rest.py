"""The router as a v2 backend for the REST front (mesh.http.v2), and for the repository
extension on both protocols.

A REST inference request arrives here as a ModelInferRequest (mesh.http.codec made it) and is
serialized once, then takes the very path a gRPC request takes: `Router.infer`, with the
single-flight miss, the etcd claim, placement, the hand-off and the retries. The pod's answer is
parsed once, for the codec to turn into JSON or binary.

The repository extension, in mesh terms: the index lists the registered models with their
state in the mesh (READY when a copy is loaded somewhere, LOADING, UNAVAILABLE with the last
failure or "not loaded"); load makes sure a copy is loaded somewhere; unload unloads every copy
and leaves the registration (the next request loads it again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from mesh.cluster.records import PlacementState
from mesh.errors import ModelNotFound
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import management_pb2 as mpb
from mesh.grpcstatus import status_name
from mesh.http.v2 import ModelIndexEntry
from mesh.router.core import Router
from mesh.router.management import Management
from mesh.router.metrics import RouterMetrics

log = logging.getLogger(__name__)

# The `method` label of REST inference in mesh_router_requests_total and _request_seconds.
REST_INFER = "REST:infer"

# Management's model states as the repository extension names them (Triton's names).
_INDEX_STATE = {
    "LOADED": "READY",
    "LOADING": "LOADING",
    "FAILED": "UNAVAILABLE",
    "NOT_LOADED": "UNAVAILABLE",
}


class RouterBackend:
    """mesh.http.v2.V2Backend over a Router and its management API."""

    def __init__(
        self,
        router: Router,
        management: Management,
        ready: Callable[[], bool],
        metrics: RouterMetrics | None = None,
    ) -> None:
        self._router = router
        self._management = management
        self._ready = ready
        self._metrics = metrics

    def ready(self) -> bool:
        return self._ready()

    async def model_ready(self, name: str, version: str) -> bool:
        return bool(self._router.holders(self._router.resolve(name)))

    async def model_metadata(
        self, name: str, version: str, timeout: float | None
    ) -> pb.ModelMetadataResponse:
        router = self._router
        model_id = router.resolve(name)
        pod_id = await router.ensure_loaded(
            model_id, deadline=time.monotonic() + timeout if timeout else None
        )
        instance = router.mirror.instances.get(pod_id)
        if instance is None:
            raise ModelNotFound(f"model {name!r}: its pod left the mesh")
        pod = router.pod_client(pod_id, instance.address, instance.data_address)
        forwarded = pb.ModelMetadataRequest(name=model_id, version=version)
        raw = await pod.metadata(forwarded.SerializeToString(), timeout=timeout)
        response = pb.ModelMetadataResponse.FromString(raw)
        response.name = name
        return response

    async def infer(
        self, request: pb.ModelInferRequest, name: str, timeout: float | None
    ) -> pb.ModelInferResponse:
        started = time.perf_counter()
        status = "OK"
        try:
            model_id = self._router.resolve(name)
            raw = await self._router.infer(request.SerializeToString(), model_id, timeout)
            return pb.ModelInferResponse.FromString(raw)
        except Exception as exc:
            status = status_name(exc)
            raise
        finally:
            if self._metrics is not None:
                # The REST twin of ModelInfer, counted apart so that the two can be compared.
                self._metrics.observe(REST_INFER, status, time.perf_counter() - started)

    async def repository_index(self, ready_only: bool) -> list[ModelIndexEntry]:
        entries = []
        for status in (await self._management.list(mpb.ListModelsRequest())).models:
            state = _INDEX_STATE.get(status.state, "UNAVAILABLE")
            if self._router.holders(status.model_id):  # loaded, if only just (not yet mirrored)
                state = "READY"
            if ready_only and state != "READY":
                continue
            reason = ""
            if state == "UNAVAILABLE":
                reason = status.last_failure or "not loaded"
            entries.append(ModelIndexEntry(status.model_id, state, reason))
        return entries

    async def repository_load(self, name: str, timeout: float | None) -> None:
        model_id = self._router.resolve(name)
        await self._router.ensure_loaded(
            model_id, deadline=time.monotonic() + timeout if timeout else None
        )

    async def repository_unload(self, name: str) -> None:
        router = self._router
        model_id = router.resolve(name)
        copies = sorted(router.known_copies(model_id))
        results = await asyncio.gather(
            *(self._unload(model_id, pod_id) for pod_id in copies), return_exceptions=True
        )
        for pod_id, result in zip(copies, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("unload %s: on %s failed: %s", model_id, pod_id, result)
        # So that an index read next shows it unloaded (the pods publish within a moment).
        with contextlib.suppress(TimeoutError):
            await router.mirror.wait_for(
                lambda m: (
                    not any(
                        p.state is PlacementState.LOADED
                        for p in m.placements.get(model_id, {}).values()
                    )
                ),
                timeout=10,
            )

    async def _unload(self, model_id: str, pod_id: str) -> None:
        instance = self._router.mirror.instances.get(pod_id)
        if instance is None:
            return
        pod = self._router.pod_client(pod_id, instance.address, instance.data_address)
        await pod.unload(model_id, timeout=60)
        self._router.forget_copy(model_id, pod_id)
