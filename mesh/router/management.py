"""Model registration, status and vmodels: the management API's behaviour.

Writes go to the store (registrations are not on the request path); reads come from the
mirror. A vmodel transition loads the new target first and switches clients only once it is
loaded; the old target keeps serving until then.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

from mesh.cluster.codec import Keys, encode
from mesh.cluster.demand import read_demand
from mesh.cluster.mirror import Mirror
from mesh.cluster.records import ModelRecord, VModelRecord
from mesh.cluster.store import KeyValueStore
from mesh.errors import InvalidRequest, MeshError, ModelNotFound
from mesh.gen import management_pb2 as mpb
from mesh.ids import check_id
from mesh.llm.protocol import refuse_request_batching
from mesh.placement.failures import FailureLog
from mesh.router.batches import MAX_BATCH, error_fields, record_put, register_records
from mesh.router.overview import (
    Activity,
    ModelView,
    model_view,
    pod_loads_per_second,
    snapshot,
    vmodel_view,
)
from mesh.router.transport import PodTransport
from mesh.storageref import StorageRef, check_storage
from mesh.storagewire import from_request, to_message

log = logging.getLogger(__name__)


def _same_artifact(a: ModelRecord, b: ModelRecord) -> bool:
    return (a.format, a.storage, dict(a.options)) == (b.format, b.storage, dict(b.options))


def _storage(request: mpb.RegisterModelRequest) -> tuple[StorageRef, dict[str, str]]:
    """The registration's StorageRef, checked, and its runtime options: from `storage`, or
    from the deprecated storage_key, storage_path and "storage.*" runtime options."""
    what = f"model {request.model_id!r}"
    try:
        ref, runtime_options = from_request(
            request.storage if request.HasField("storage") else None,
            request.storage_key,
            request.storage_path,
            request.options.runtime_options,
        )
    except InvalidRequest as exc:
        raise InvalidRequest(f"{what}: {exc}") from None
    return check_storage(ref, what), runtime_options


class ManagementView(Protocol):
    """What the management API may use of its router: the narrow interface it is typed on.

    `mesh.router.core.Router` satisfies it (mypy checks that where mesh.router.server hands the
    router over). Reads: the mirror, where copies are, the failures and activity the status
    pages show; actions: a model loaded through the router's single-flight loader, and a
    client for one pod (an unload an operator asked for).
    """

    @property
    def mirror(self) -> Mirror: ...

    @property
    def failures(self) -> FailureLog: ...

    @property
    def activity(self) -> Activity: ...

    def known_copies(self, model_id: str) -> set[str]: ...

    def pod_client(self, pod_id: str, address: str, data_address: str = "") -> PodTransport: ...

    async def ensure_loaded(
        self, model_id: str, exclude: Sequence[str] = (), deadline: float | None = None
    ) -> str: ...


class Management:
    def __init__(self, store: KeyValueStore, keys: Keys, router: ManagementView) -> None:
        self._store = store
        self._keys = keys
        self._router = router
        self._transitions: dict[str, asyncio.Task[None]] = {}
        self._transition_errors: dict[str, str] = {}

    @property
    def transition_errors(self) -> dict[str, str]:
        """Why this router's vmodel transitions are blocked, by vmodel."""
        return self._transition_errors

    @property
    def _mirror(self) -> Mirror:
        return self._router.mirror

    # -- models --------------------------------------------------------------------------------

    async def register(self, request: mpb.RegisterModelRequest) -> mpb.ModelStatusResponse:
        record = self._record(request, {})
        put = record_put(self._keys, record)
        await self._store.put(put.key, put.value)
        await self._mirror.caught_up(
            lambda m: m.models.get(record.model_id) == record,
            f"model {record.model_id!r} registered",
        )
        if request.load_now:
            await self._router.ensure_loaded(record.model_id)
        return self._status(record.model_id)

    async def register_many(self, request: mpb.RegisterModelsRequest) -> mpb.RegisterModelsResponse:
        """RegisterModel for each model, the records written in a few transactions.

        Each model is checked alone and fails alone (its result carries the status code the
        single call would have raised). A store failure fails the models of that transaction.
        """
        if len(request.models) > MAX_BATCH:
            raise InvalidRequest(
                f"{len(request.models)} models in one RegisterModels call: at most {MAX_BATCH}"
            )
        outcomes: list[ModelRecord | MeshError] = []
        pending: dict[str, ModelRecord] = {}
        for item in request.models:
            try:
                if item.model_id in pending:
                    raise InvalidRequest(f"model {item.model_id!r} appears twice in the batch")
                record = self._record(item, pending)
            except MeshError as exc:
                outcomes.append(exc)
                continue
            pending[record.model_id] = record
            outcomes.append(record)
        # An adapter whose base is in this batch is written once its base is: in another
        # transaction, the base's failing would leave the adapter registered on nothing.
        first = [r for r in pending.values() if r.base not in pending]
        adapters = [r for r in pending.values() if r.base in pending]
        written = await register_records(self._store, self._keys, first)
        ready = []
        for adapter in adapters:
            base_at = written[adapter.base]
            if isinstance(base_at, MeshError):  # its code, with what it says of the base
                written[adapter.model_id] = type(base_at)(
                    f"model {adapter.model_id!r}: its base {adapter.base!r} was not "
                    f"registered: {base_at}"
                )
            else:
                ready.append(adapter)
        if ready:
            written.update(await register_records(self._store, self._keys, ready))
        revision = max((r for r in written.values() if isinstance(r, int)), default=0)
        if revision:
            # Every record written is readable here when the call returns, as with one.
            await self._mirror.caught_up(
                lambda m: m.revision >= revision,
                f"the batch's models registered (revision {revision})",
                timeout=60,
            )
        loads = [
            item.model_id
            for item in request.models
            if item.load_now and isinstance(written.get(item.model_id), int)
        ]
        loaded = await asyncio.gather(
            *(self._router.ensure_loaded(m) for m in loads), return_exceptions=True
        )
        load_errors = {
            m: e for m, e in zip(loads, loaded, strict=True) if isinstance(e, BaseException)
        }
        response = mpb.RegisterModelsResponse()
        for item, outcome in zip(request.models, outcomes, strict=True):
            failure: BaseException | None = None
            if isinstance(outcome, ModelRecord):
                written_at = written[outcome.model_id]
                failure = written_at if isinstance(written_at, MeshError) else None
                failure = failure or load_errors.get(outcome.model_id)
                if failure is None:
                    try:
                        status = self._status(outcome.model_id)
                    except MeshError as exc:  # unregistered again meanwhile
                        failure = exc
                    else:
                        response.results.add(model_id=item.model_id, status=status)
                        continue
            else:
                failure = outcome
            response.results.add(model_id=item.model_id, **error_fields(failure))
        return response

    def _record(
        self, request: mpb.RegisterModelRequest, pending: Mapping[str, ModelRecord]
    ) -> ModelRecord:
        """The record RegisterModel writes for `request`, checked; `pending`: records of the
        same batch written beside it (a base may be one of them)."""
        check_id(request.model_id)
        if not request.format:
            raise InvalidRequest(f"model {request.model_id!r}: format is required")
        o = request.options
        storage, runtime_options = _storage(request)
        if o.min_copies < 0 or o.max_copies < 0 or (o.max_copies and o.min_copies > o.max_copies):
            raise InvalidRequest(f"model {request.model_id!r}: copies must satisfy 0 <= min <= max")
        if o.size_estimate < 0 or o.artifact_bytes < 0:
            raise InvalidRequest(f"model {request.model_id!r}: sizes must not be negative")
        refuse_request_batching(request.model_id, request.format, runtime_options)
        if request.base:
            check_id(request.base, "base model id")
            if request.base == request.model_id:
                raise InvalidRequest(f"model {request.model_id!r} names itself as its base")
            base = pending.get(request.base) or self._mirror.models.get(request.base)
            if base is None:
                raise InvalidRequest(
                    f"model {request.model_id!r}: its base {request.base!r} is not registered"
                )
            if base.base:
                raise InvalidRequest(
                    f"model {request.model_id!r}: its base {request.base!r} is itself an adapter"
                )
        record = ModelRecord(
            model_id=request.model_id,
            format=request.format,
            storage=storage,
            size_estimate=o.size_estimate,
            artifact_bytes=o.artifact_bytes,
            min_copies=o.min_copies,
            max_copies=o.max_copies,
            pinned_pods=tuple(o.pinned_pods),
            required_labels=dict(o.required_labels),
            preferred_labels=dict(o.preferred_labels),
            options=runtime_options,
            registered_at=time.time(),
            base=request.base,
        )
        old = self._mirror.models.get(record.model_id)
        if old is not None and _same_artifact(old, record):
            # What a copy measured still holds for the same files and options.
            record = dataclasses.replace(
                record,
                measured_size=old.measured_size,
                measured_sizes=old.measured_sizes,
                artifact_bytes=record.artifact_bytes or old.artifact_bytes,
            )
        return record

    async def unregister(self, request: mpb.UnregisterModelRequest) -> mpb.UnregisterModelResponse:
        model_id = request.model_id
        existed = await self._store.delete(self._keys.model(model_id))
        # Pods holding it in their host tier too: a re-registration must not promote the old
        # files there (UnloadModel drops both tiers).
        warm = {i.pod_id for i in self._mirror.instances.values() if model_id in i.host_models}
        copies = sorted(self._router.known_copies(model_id) | warm)
        results = await asyncio.gather(
            *(self._unload(model_id, pod_id) for pod_id in copies), return_exceptions=True
        )
        for pod_id, result in zip(copies, results, strict=True):
            if isinstance(result, Exception):
                log.warning("unregister %s: unload on %s failed: %s", model_id, pod_id, result)
        return mpb.UnregisterModelResponse(existed=existed)

    async def _unload(self, model_id: str, pod_id: str) -> None:
        instance = self._mirror.instances.get(pod_id)
        if instance is None:
            return
        pod = self._router.pod_client(pod_id, instance.address, instance.data_address)
        await pod.unload(model_id, timeout=60)

    async def status(self, request: mpb.GetModelStatusRequest) -> mpb.ModelStatusResponse:
        return self._status(request.model_id)

    async def ensure_loaded(self, request: mpb.EnsureLoadedRequest) -> mpb.ModelStatusResponse:
        if request.model_id not in self._mirror.models:
            raise ModelNotFound(f"model {request.model_id!r} is not registered")
        if request.retry:
            self._router.failures.clear(request.model_id)  # an operator asked: try again now
        await self._router.ensure_loaded(request.model_id)
        return self._status(request.model_id)

    async def list(self, request: mpb.ListModelsRequest) -> mpb.ListModelsResponse:
        return mpb.ListModelsResponse(models=[self._status(m) for m in sorted(self._mirror.models)])

    def _status(self, model_id: str) -> mpb.ModelStatusResponse:
        view = model_view(model_id, self._mirror, self._router.failures, time.time())
        record = self._mirror.models.get(model_id)
        if view is None or record is None:
            raise ModelNotFound(f"model {model_id!r} is not registered")
        return model_message(view, record)

    async def mesh_status(self, request: mpb.GetMeshStatusRequest) -> mpb.MeshStatusResponse:
        view = snapshot(
            self._mirror,
            self._router.activity,
            self._router.failures,
            time.time(),
            self._transition_errors,
        )
        response = mpb.MeshStatusResponse(now=view.now)
        loads = pod_loads_per_second(self._router.activity, view.now)
        for pod in view.pods:
            response.pods.add(
                pod_id=pod.pod_id, address=pod.address, capacity_bytes=pod.capacity,
                used_bytes=pod.used, models=[m.model_id for m in pod.models],
                loading_count=pod.loading, in_flight=pod.in_flight, lru_time=pod.lru_time,
                draining=pod.draining, updated_at=pod.updated_at, labels=dict(pod.labels),
                runtimes=list(pod.runtimes), host_capacity_bytes=pod.host_capacity,
                host_used_bytes=pod.host_used, host_models=list(pod.host_models),
                device=pod.device, loads_per_second=loads.get(pod.pod_id, 0.0),
            )  # fmt: skip
        for model in view.models:
            record = self._mirror.models.get(model.model_id)
            if record is not None:
                response.models.append(model_message(model, record))
        for v in view.vmodels:
            response.vmodels.add(
                vmodel_id=v.vmodel_id, active_model_id=v.active, target_model_id=v.target,
                transition=v.transition, last_failure=v.last_failure,
            )  # fmt: skip
        await self._add_demand(response)
        return response

    async def _add_demand(self, response: mpb.MeshStatusResponse) -> None:
        """Every router's held requests (their demand records, one range read): what a pool
        controller that reads only this API needs to bring a pool back from zero. etcd failing
        leaves the rest of the answer whole, with the reason in demand_error."""
        try:
            records = await read_demand(self._store, self._keys.root)
        except MeshError as exc:
            log.warning("mesh status: demand records: %s", exc)
            response.demand_error = str(exc)
            return
        for d in sorted(records, key=lambda d: (d.pool, d.model_id, d.router_id)):
            response.demand.add(
                pool=d.pool, model_id=d.model_id, router_id=d.router_id, held=d.held,
                bytes_wanted=d.bytes_wanted, since=d.since,
            )  # fmt: skip

    # -- vmodels -------------------------------------------------------------------------------

    async def set_vmodel(self, request: mpb.SetVModelRequest) -> mpb.VModelStatusResponse:
        vmodel_id, target = request.vmodel_id, request.target_model_id
        check_id(vmodel_id, "vmodel id")
        if target not in self._mirror.models:
            raise ModelNotFound(f"vmodel {vmodel_id!r}: target model {target!r} is not registered")
        current = self._mirror.vmodels.get(vmodel_id)
        active = current.active if current is not None else ""
        if not active or active == target:
            record = VModelRecord(vmodel_id, target)
        else:
            # Load before switch: clients keep the old model until the new one is loaded.
            record = VModelRecord(vmodel_id, target, previous=active)
            old = self._transitions.pop(vmodel_id, None)
            if old is not None:
                old.cancel()  # before the write: it must not write its own target over it
        revision = await self._store.put(self._keys.vmodel(vmodel_id), encode(record))
        # The view holds this write before the transition reads the vmodel back from it: with
        # the target loaded already, the transition found the old record and ended, leaving the
        # vmodel in transition for good.
        await self._mirror.caught_up(
            lambda m: m.revision >= revision, f"vmodel {vmodel_id!r} set to {target!r}"
        )
        if record.previous:
            self._transition_errors.pop(vmodel_id, None)
            task = asyncio.create_task(self._transition(vmodel_id, target))
            self._transitions[vmodel_id] = task
            if request.wait:
                await asyncio.shield(task)
        return self._vmodel_status(vmodel_id)

    async def _transition(self, vmodel_id: str, target: str) -> None:
        try:
            await self._router.ensure_loaded(target)
            current = self._mirror.vmodels.get(vmodel_id)
            if current is not None and current.target == target:
                await self._store.put(
                    self._keys.vmodel(vmodel_id), encode(VModelRecord(vmodel_id, target))
                )
                await self._mirror.caught_up(
                    lambda m: (v := m.vmodels.get(vmodel_id)) is not None and not v.previous,
                    f"vmodel {vmodel_id!r} switched to {target!r}",
                )
        except MeshError as exc:
            self._transition_errors[vmodel_id] = str(exc)
            log.warning("vmodel %s: transition to %s blocked: %s", vmodel_id, target, exc)
        finally:
            self._transitions.pop(vmodel_id, None)

    async def delete_vmodel(self, request: mpb.DeleteVModelRequest) -> mpb.DeleteVModelResponse:
        task = self._transitions.pop(request.vmodel_id, None)
        if task is not None:
            task.cancel()
        existed = await self._store.delete(self._keys.vmodel(request.vmodel_id))
        return mpb.DeleteVModelResponse(existed=existed)

    async def vmodel_status(self, request: mpb.GetVModelStatusRequest) -> mpb.VModelStatusResponse:
        return self._vmodel_status(request.vmodel_id)

    def _vmodel_status(self, vmodel_id: str) -> mpb.VModelStatusResponse:
        error = self._transition_errors.get(vmodel_id, "")
        view = vmodel_view(vmodel_id, self._mirror, self._router.failures, time.time(), error)
        if view is None:
            raise ModelNotFound(f"vmodel {vmodel_id!r} does not exist")
        return mpb.VModelStatusResponse(
            vmodel_id=vmodel_id,
            active_model_id=view.active,
            target_model_id=view.target,
            transition=view.transition,
            last_failure=view.last_failure,
        )


def model_message(view: ModelView, record: ModelRecord) -> mpb.ModelStatusResponse:
    response = mpb.ModelStatusResponse(
        model_id=view.model_id,
        format=record.format,
        storage_key=record.storage.key,
        storage_path=record.storage.path,
        storage=to_message(record.storage),
        options=mpb.ModelOptions(
            min_copies=record.min_copies,
            max_copies=record.max_copies,
            pinned_pods=record.pinned_pods,
            required_labels=dict(record.required_labels),
            preferred_labels=dict(record.preferred_labels),
            runtime_options=dict(record.options),
            size_estimate=record.size_estimate,
            artifact_bytes=record.artifact_bytes,
        ),
        last_failure=view.last_failure,
        state=view.state,
        last_used=view.last_used,
    )
    for c in view.copies:
        response.copies.add(
            pod_id=c.pod_id, state=c.state, size_bytes=c.size, since=c.since, error=c.error,
            last_used=c.last_used,
        )  # fmt: skip
    for h in view.host_copies:
        response.host_copies.add(pod_id=h.pod_id, host_bytes=h.host_bytes)
    return response
