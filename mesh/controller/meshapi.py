"""The mesh side of the controller: the routers' management API, over gRPC.

The controller registers through the management API rather than writing etcd itself: the
router validates registrations, runs vmodel transitions load-before-switch and unloads models
everywhere on unregister, and the controller needs no etcd credentials. Errors come back as
mesh errors: `ModelNotFound` for what is not registered, `Unavailable` for a router that cannot
be reached (the controller backs off and retries).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import grpc

from mesh.cluster.records import PlacementState
from mesh.controller.predictor import ModelView, PredictorSpec, VModelView
from mesh.errors import InvalidRequest, ModelNotFound, Unavailable
from mesh.gen import management_pb2 as mpb
from mesh.gen import management_pb2_grpc
from mesh.placement.snapshot import HeldModel, PodView
from mesh.storagewire import to_message

_STATES = {"loaded": PlacementState.LOADED, "loading": PlacementState.LOADING}
POOL_LABEL = "pool"


@dataclass(frozen=True, slots=True)
class PoolsView:
    """The mesh's pods by pool (their `pool` label), as the pool policy reads them."""

    pods: dict[str, list[PodView]] = field(default_factory=dict)
    loads_per_second: dict[str, float] = field(default_factory=dict)  # by pod id
    now: float = 0.0  # the router's clock: ages are measured against it
    # Requests the routers hold for each pool (no pod to serve them), and by model within it.
    held: dict[str, int] = field(default_factory=dict)
    held_models: dict[str, dict[str, int]] = field(default_factory=dict)


class MeshApi:
    def __init__(
        self,
        address: str,
        token: str | None = None,
        ca: Path | None = None,
        timeout: float = 30.0,
    ) -> None:
        if ca is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
            self._channel = grpc.secure_channel(address, credentials)
        else:
            self._channel = grpc.insecure_channel(address)
        self._stub: Any = management_pb2_grpc.ManagementStub(self._channel)  # type: ignore[no-untyped-call]
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._timeout = timeout
        self.address = address

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return getattr(self._stub, method)(
                request, timeout=timeout or self._timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
            if code is grpc.StatusCode.NOT_FOUND:
                raise ModelNotFound(details) from None
            if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
                raise InvalidRequest(f"{method}: {details}") from None
            raise Unavailable(f"router {self.address}: {method}: {code.name}: {details}") from None

    def draining_pods(self) -> dict[str, int]:
        """The pods that are draining, with how many models each still holds."""
        r = self._call("GetMeshStatus", mpb.GetMeshStatusRequest())
        return {p.pod_id: len(p.models) for p in r.pods if p.draining}

    def pools(self) -> PoolsView:
        """Every pod with a `pool` label, with the copies it holds (size, last use), and the
        requests the routers hold for each pool (scale from zero)."""
        r = self._call("GetMeshStatus", mpb.GetMeshStatusRequest())
        held: dict[str, dict[str, HeldModel]] = {}
        for m in r.models:
            for c in m.copies:
                state = _STATES.get(c.state)
                if state is not None:
                    held.setdefault(c.pod_id, {})[m.model_id] = HeldModel(
                        m.model_id, c.size_bytes, c.last_used or c.since, 0, state
                    )
        out = PoolsView(now=r.now)
        for p in r.pods:
            pool = p.labels.get(POOL_LABEL)
            if not pool:
                continue
            out.pods.setdefault(pool, []).append(
                PodView(
                    pod_id=p.pod_id, capacity=p.capacity_bytes, used=p.used_bytes,
                    lru_time=p.lru_time, loading_count=p.loading_count, in_flight=p.in_flight,
                    draining=p.draining, runtimes=frozenset(p.runtimes),
                    labels=MappingProxyType(dict(p.labels)),
                    models=MappingProxyType(held.get(p.pod_id, {})),
                )
            )  # fmt: skip
            out.loads_per_second[p.pod_id] = p.loads_per_second
        for d in r.demand:
            waiting = max(d.held, 1)  # a record exists only while a request is held
            out.held[d.pool] = out.held.get(d.pool, 0) + waiting
            models = out.held_models.setdefault(d.pool, {})
            models[d.model_id] = models.get(d.model_id, 0) + waiting
        return out

    def model(self, model_id: str) -> ModelView | None:
        try:
            r = self._call("GetModelStatus", mpb.GetModelStatusRequest(model_id=model_id))
        except ModelNotFound:
            return None
        failed = [c for c in r.copies if c.state == "failed"]
        return ModelView(
            model_id=r.model_id,
            state=r.state,
            loaded_copies=sum(1 for c in r.copies if c.state == "loaded"),
            failed_copies=len(failed),
            last_failure=r.last_failure,
            failed_at=max((c.since for c in failed), default=0.0),
        )

    def register(self, spec: PredictorSpec) -> None:
        options = mpb.ModelOptions(
            runtime_options=dict(spec.options),
            required_labels=spec.required_labels,
            preferred_labels=spec.preferred_labels,
        )
        request = mpb.RegisterModelRequest(
            model_id=spec.model_id,
            format=spec.format,
            storage=to_message(spec.storage),
            options=options,
        )
        self._call("RegisterModel", request)

    def start_loading(self, model_id: str) -> None:
        """Ask for a copy without waiting for it: the load goes on in the router after the
        call's short deadline passes."""
        try:
            self._call("EnsureLoaded", mpb.EnsureLoadedRequest(model_id=model_id), timeout=0.5)
        except InvalidRequest:
            pass  # the load failed at once: the model's status says why
        except Unavailable as exc:
            if "DEADLINE_EXCEEDED" not in str(exc):
                raise

    def unregister(self, model_id: str) -> bool:
        r = self._call("UnregisterModel", mpb.UnregisterModelRequest(model_id=model_id))
        return bool(r.existed)

    def model_ids(self) -> list[str]:
        return [m.model_id for m in self._call("ListModels", mpb.ListModelsRequest()).models]

    def vmodel(self, name: str) -> VModelView | None:
        try:
            r = self._call("GetVModelStatus", mpb.GetVModelStatusRequest(vmodel_id=name))
        except ModelNotFound:
            return None
        return VModelView(r.active_model_id, r.target_model_id, r.transition, r.last_failure)

    def set_vmodel(self, name: str, target: str) -> None:
        self._call("SetVModel", mpb.SetVModelRequest(vmodel_id=name, target_model_id=target))

    def delete_vmodel(self, name: str) -> bool:
        r = self._call("DeleteVModel", mpb.DeleteVModelRequest(vmodel_id=name))
        return bool(r.existed)
