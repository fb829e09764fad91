"""Predictor resources as the mesh sees them: parsing, model ids, and the status to write back.

Pure functions, no I/O. A Predictor (`serving.kserve.io/v1alpha1`, as modelmesh-serving defines
it) becomes:

- a model whose id is the Predictor's name plus a hash of the parts of the spec that decide what
  is loaded (`fraud-3f2a9c01d4`), so that a spec change is a new model, never a model changed
  under clients' feet;
- a vmodel named after the Predictor, pointing to that model. Clients ask for the Predictor's
  name; a spec change moves the vmodel load-before-switch, with no failed request.

Both storage forms are understood: `storage{key, path, parameters}` (with `path` at the top as
a fallback) and the older `storage.s3{secretKey, bucket}` beside `path`.

>>> spec = parse({"metadata": {"name": "fraud", "namespace": "ml"},
...               "spec": {"modelType": {"name": "xgboost"},
...                        "storage": {"key": "s3", "path": "fraud/v3"}}})
>>> spec.model_id, spec.format, str(spec.storage)
('fraud-f27636547c', 'xgboost', 's3:fraud/v3')
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh.errors import InvalidIdentifier, InvalidRequest
from mesh.ids import check_id, check_registered_path
from mesh.storageref import LEGACY_PREFIX, PULL_OPTIONS, StorageRef, check_storage

# ModelMesh model types (and a few spellings people use) to the runtimes that serve them.
FORMATS = {
    "onnx": "onnx",
    "xgboost": "xgboost",
    "pytorch": "torch",
    "torch": "torch",
    "torchscript": "torch",
    "pt2": "torch",
}
# What reaches the puller, in the model's StorageRef: the bucket and friends.
PULL_PARAMETERS = PULL_OPTIONS
_HASH_LENGTH = 10
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class InvalidSpec(ValueError):
    """The Predictor's spec cannot become a model; the message says why, for its status."""

    def __init__(self, message: str, reason: str = "InvalidPredictorSpec") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class PredictorSpec:
    """What the mesh registers for one Predictor."""

    name: str
    namespace: str
    model_id: str
    format: str
    # Where the model's files are, with the puller's options (storage.parameters).
    storage: StorageRef
    # The runtime's options (none come from a Predictor today).
    options: Mapping[str, str] = field(default_factory=dict)
    gpu: str = ""
    # The model type as the spec names it, its version, and the runtime it names (if any):
    # what choosing a ServingRuntime looks at (mesh.controller.runtimes).
    model_type: str = ""
    version: str = ""
    runtime: str = ""
    # The pool (ServingRuntime) the model is placed on; empty: any pod of its runtime.
    pool: str = ""

    @property
    def required_labels(self) -> dict[str, str]:
        # gpu: required places the model only on pods labelled as GPU pods; a pool only on
        # its pods (mesh.controller.runtimes.POOL_LABEL).
        labels = {"gpu": "true"} if self.gpu == "required" else {}
        if self.pool:
            labels["pool"] = self.pool
        return labels

    @property
    def preferred_labels(self) -> dict[str, str]:
        # gpu: preferred puts it on a GPU pod when one has room.
        return {"gpu": "true"} if self.gpu == "preferred" else {}


def parse(
    resource: Mapping[str, Any], known_runtimes: Collection[str] = (), pool: str = ""
) -> PredictorSpec:
    """The Predictor as the mesh registers it; InvalidSpec names what is wrong.

    `known_runtimes`: ServingRuntime names a spec may name besides the mesh's runtimes.
    `pool`: the ServingRuntime chosen for it, part of the model's identity (a model moved to
    another pool is a new model, loaded there before the old one goes)."""
    metadata = resource.get("metadata") or {}
    name = str(metadata.get("name") or "")
    namespace = str(metadata.get("namespace") or "")
    if not _NAME.match(name):
        raise InvalidSpec(f"metadata.name {name!r} is not a valid name")
    spec = resource.get("spec")
    if not isinstance(spec, Mapping):
        raise InvalidSpec("spec is missing")
    model_type = spec.get("modelType")
    if not isinstance(model_type, Mapping) or not model_type.get("name"):
        raise InvalidSpec("spec.modelType.name is required")
    type_name = str(model_type["name"]).lower()
    runtime = spec.get("runtime") or {}
    if not isinstance(runtime, Mapping):
        raise InvalidSpec("spec.runtime must be an object")
    format = FORMATS.get(type_name)
    if format is None:
        raise InvalidSpec(
            f"no runtime in this mesh serves model type {type_name!r} "
            f"(served: {', '.join(sorted(FORMATS))})",
            reason="NoSupportingRuntime",
        )
    runtime_name = str(runtime.get("name") or "")
    if runtime_name and runtime_name not in {*FORMATS.values(), *known_runtimes}:
        raise InvalidSpec(
            f"spec.runtime.name {runtime_name!r} is not a runtime of this mesh "
            f"({', '.join(sorted(set(FORMATS.values())))})",
            reason="RuntimeNotRecognized",
        )
    storage_key, storage_path, parameters = _storage(spec)
    try:
        storage = check_storage(StorageRef.parse(storage_key, storage_path, parameters))
    except InvalidRequest as exc:
        raise InvalidSpec(f"spec.storage: {exc}") from None
    gpu = str(spec.get("gpu") or "")
    if gpu not in ("", "required", "preferred"):
        raise InvalidSpec(f"spec.gpu must be 'required' or 'preferred', not {gpu!r}")
    # The model id hashes the parameters as they were spelled when they travelled as
    # "storage.*" runtime options, so that a Predictor keeps its model id.
    options = {f"{LEGACY_PREFIX}{k}": v for k, v in parameters.items()}
    identity = {
        "format": format,
        "type": type_name,
        # Part of what the model is (a new version is a new model), not a runtime option.
        "version": str(model_type.get("version") or ""),
        "storage_key": storage_key,
        "storage_path": storage_path,
        "options": options,
        "gpu": gpu,
        "runtime": runtime_name,
    }
    if pool:
        identity["pool"] = pool
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    model_id = f"{name}-{digest[:_HASH_LENGTH]}"
    try:
        check_id(model_id)
    except InvalidIdentifier as exc:
        raise InvalidSpec(
            f"metadata.name {name!r} makes a model id the mesh refuses: {exc}"
        ) from None
    return PredictorSpec(
        name=name,
        namespace=namespace,
        model_id=model_id,
        format=format,
        storage=storage,
        gpu=gpu,
        model_type=type_name,
        version=str(model_type.get("version") or ""),
        runtime=runtime_name,
        pool=pool,
    )


def _storage(spec: Mapping[str, Any]) -> tuple[str, str, dict[str, str]]:
    storage = spec.get("storage") or {}
    if not isinstance(storage, Mapping):
        raise InvalidSpec("spec.storage must be an object")
    parameters = storage.get("parameters") or {}
    if not isinstance(parameters, Mapping):
        raise InvalidSpec("spec.storage.parameters must be a map of strings")
    unknown = sorted(set(parameters) - {"type", *PULL_PARAMETERS})
    if unknown:
        raise InvalidSpec(
            f"spec.storage.parameters {unknown} are not understood "
            f"(known: {', '.join(PULL_PARAMETERS)})"
        )
    pulled = {k: str(v) for k, v in parameters.items() if k in PULL_PARAMETERS}
    s3 = storage.get("s3")
    if s3 is not None:  # the older form: storage.s3{secretKey, bucket} and spec.path
        if not isinstance(s3, Mapping) or not s3.get("secretKey"):
            raise InvalidSpec("spec.storage.s3.secretKey is required in the s3 form")
        key = str(s3["secretKey"])
        if s3.get("bucket"):
            pulled["bucket"] = str(s3["bucket"])
    else:
        key = str(storage.get("key") or "")
    path = str(storage.get("path") or spec.get("path") or "")
    if not path:
        raise InvalidSpec("spec.path or spec.storage.path is required")
    try:
        check_registered_path(path)
    except InvalidIdentifier as exc:
        raise InvalidSpec(str(exc)) from None
    return key, path, pulled


def owned_by(model_id: str, name: str) -> bool:
    """Whether `model_id` is one this controller made for the Predictor `name`."""
    prefix, _, digest = model_id.rpartition("-")
    return (
        prefix == name
        and len(digest) == _HASH_LENGTH
        and all(c in "0123456789abcdef" for c in digest)
    )


# -- status -----------------------------------------------------------------------------------

PENDING, STANDBY, LOADING, LOADED, FAILED = (
    "Pending",
    "Standby",
    "Loading",
    "Loaded",
    "FailedToLoad",
)
_MODEL_STATES = {"LOADED": LOADED, "LOADING": LOADING, "FAILED": FAILED, "NOT_LOADED": STANDBY}
_TRANSITIONS = {
    "UP_TO_DATE": "UpToDate",
    "IN_PROGRESS": "InProgress",
    "BLOCKED_BY_FAILED_LOAD": "BlockedByFailedLoad",
}


@dataclass(frozen=True, slots=True)
class ModelView:
    """A model as the management API reports it (mesh.gen.management_pb2.ModelStatusResponse)."""

    model_id: str
    state: str  # LOADED, LOADING, FAILED, NOT_LOADED
    loaded_copies: int = 0
    failed_copies: int = 0
    last_failure: str = ""
    failed_at: float = 0.0


@dataclass(frozen=True, slots=True)
class VModelView:
    active: str
    target: str
    transition: str  # UP_TO_DATE, IN_PROGRESS, BLOCKED_BY_FAILED_LOAD
    last_failure: str = ""


def status(
    spec: PredictorSpec | InvalidSpec,
    vmodel: VModelView | None,
    models: Mapping[str, ModelView],
    previous: Mapping[str, Any],
    now: str,
    grpc_endpoint: str = "",
    http_endpoint: str = "",
) -> dict[str, Any]:
    """The Predictor's status from the mesh's view.

    `previous` is the status the resource has: a load failure is kept (with its time) until a
    copy loads, because the pod forgets failed loads after a while and the operator should not.
    `now` (RFC 3339) stamps a failure seen for the first time.
    """
    out: dict[str, Any] = {"grpcEndpoint": grpc_endpoint, "httpEndpoint": http_endpoint}
    old_failure = previous.get("lastFailureInfo") or {}
    if isinstance(spec, InvalidSpec):
        active_id = vmodel.active if vmodel is not None else ""
        active = models.get(active_id)
        out.update(
            available=active is not None and _state(active) in (LOADED, STANDBY, LOADING),
            activeModelState=_state(active) if active is not None else PENDING,
            targetModelState=FAILED,
            transitionStatus="InvalidSpec",
            lastFailureInfo=_failure(old_failure, "", spec.reason, str(spec), "", now),
            totalCopies=active.loaded_copies if active is not None else 0,
            failedCopies=active.failed_copies if active is not None else 0,
        )
        return out
    if vmodel is None:
        out.update(
            available=False, activeModelState=PENDING, targetModelState="",
            transitionStatus="InProgress", totalCopies=0, failedCopies=0,
        )  # fmt: skip
        return out
    active = models.get(vmodel.active)
    target = models.get(vmodel.target) if vmodel.target != vmodel.active else None
    active_state = _state(active) if active is not None else PENDING
    if active is not None and active_state == STANDBY and _known_failure(old_failure, active):
        active_state = FAILED  # failed before and not loaded since
    transition = _TRANSITIONS.get(vmodel.transition, "InProgress")
    if vmodel.target != spec.model_id:
        transition = "InProgress"  # the mesh has not caught up with the spec yet
    out.update(
        available=active_state in (LOADED, STANDBY, LOADING),
        activeModelState=active_state,
        targetModelState=(_state(target) if target is not None else "")
        if transition != "UpToDate"
        else "",
        transitionStatus=transition,
        totalCopies=active.loaded_copies if active is not None else 0,
        failedCopies=(active.failed_copies if active is not None else 0)
        + (target.failed_copies if target is not None else 0),
    )
    if transition == "BlockedByFailedLoad":
        out["targetModelState"] = FAILED
    failing = None
    if target is not None and (target.last_failure or vmodel.last_failure):
        failing = target if target.last_failure else None
        message = target.last_failure or vmodel.last_failure
        model_id = target.model_id
    elif active is not None and active.last_failure and active_state != LOADED:
        failing, message, model_id = active, active.last_failure, active.model_id
    elif active_state == FAILED:
        out["lastFailureInfo"] = dict(old_failure)  # the pod forgot it; we keep it as it was
        message = ""
    else:
        message = ""
    if message:
        location, _, detail = message.partition(": ")
        if not detail:
            location, detail = "", message
        out["lastFailureInfo"] = _failure(
            old_failure, location, "ModelLoadFailed", detail, model_id, now,
            failing.failed_at if failing is not None else 0.0,
        )  # fmt: skip
    return out


def _state(model: ModelView | None) -> str:
    if model is None:
        return PENDING
    return _MODEL_STATES.get(model.state, STANDBY)


def _known_failure(old: Mapping[str, Any], model: ModelView) -> bool:
    return bool(old) and old.get("modelId") == model.model_id and model.loaded_copies == 0


def _failure(
    old: Mapping[str, Any],
    location: str,
    reason: str,
    message: str,
    model_id: str,
    now: str,
    at: float = 0.0,
) -> dict[str, str]:
    info = {"reason": reason, "message": message}
    if location:
        info["location"] = location
    if model_id:
        info["modelId"] = model_id
    same = all(old.get(k) == v for k, v in info.items()) and len(old) == len(info) + 1
    if same:
        info["time"] = str(old["time"])  # unchanged: keep its time, so no write
    else:
        info["time"] = _rfc3339(at) if at else now
    return info


def _rfc3339(seconds: float) -> str:
    import datetime

    stamp = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


# -- events -----------------------------------------------------------------------------------

NORMAL, WARNING = "Normal", "Warning"


@dataclass(frozen=True, slots=True)
class KubeEvent:
    """A Kubernetes Event to record on the Predictor: what changed between two statuses."""

    type: str  # Normal or Warning
    reason: str
    message: str


def events(previous: Mapping[str, Any], status: Mapping[str, Any]) -> list[KubeEvent]:
    """The Events a status change deserves, as `kubectl describe predictor` shows them:

    - Loaded (Normal): the active model became loaded;
    - FailedToLoad (Warning): a load failure not reported before, with its reason and place;
    - TransitionBlocked (Warning): the new model failed to load, the old one keeps serving;
    - InvalidSpec (Warning): the spec cannot be served.

    Only changes count, so a resync that finds nothing new records nothing. TransitionDone (a
    spec change finished: clients reach the new model) is recorded by the controller where it
    retires the old model, which a status alone cannot tell (a fast load skips InProgress).
    """
    out: list[KubeEvent] = []
    old_transition = previous.get("transitionStatus")
    transition = status.get("transitionStatus")
    failure = status.get("lastFailureInfo") or {}
    if transition == "InvalidSpec":
        if old_transition != "InvalidSpec" or failure != previous.get("lastFailureInfo"):
            out.append(KubeEvent(WARNING, "InvalidSpec", str(failure.get("message", ""))))
        return out
    if status.get("activeModelState") == LOADED and previous.get("activeModelState") != LOADED:
        copies = status.get("totalCopies", 0)
        out.append(KubeEvent(NORMAL, "Loaded", f"model loaded ({copies} copies)"))
    if failure and failure != (previous.get("lastFailureInfo") or {}):
        where = f" on {failure['location']}" if failure.get("location") else ""
        model = failure.get("modelId", "the model")
        out.append(
            KubeEvent(
                WARNING,
                "FailedToLoad",
                f"{model}{where}: {failure.get('reason', '')}: {failure.get('message', '')}",
            )
        )
    if transition == "BlockedByFailedLoad" and old_transition != "BlockedByFailedLoad":
        out.append(
            KubeEvent(
                WARNING,
                "TransitionBlocked",
                "the new model failed to load; the previous one keeps serving",
            )
        )
    return out
