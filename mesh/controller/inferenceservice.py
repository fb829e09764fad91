"""KServe InferenceServices in ModelMesh mode, handled as Predictors are: pure, no I/O.

An `InferenceService` (`serving.kserve.io/v1beta1`) is ours only with the annotation
`serving.kserve.io/deploymentMode: ModelMesh`; any other is KServe's and left alone (no
finalizer, no status). Ours becomes a Predictor-shaped resource that mesh.controller.predictor
parses (one set of rules for both kinds):

- `spec.predictor.model.modelFormat {name, version}`: `spec.modelType {name, version}`;
- `spec.predictor.model.runtime`: `spec.runtime.name`;
- `spec.predictor.model.storage {key, path, parameters}`: `spec.storage`;
- `spec.predictor.model.storageUri` `s3://b/p` or `gs://b/p`: `storage {key, path: p,
  parameters {bucket: b}}`.

For `storageUri` the storage entry is the annotation `serving.kserve.io/secretKey`, or
`storage.key`, or `default`. Other schemes are refused with a clear reason, as is the older
`spec.predictor.<framework>` form (no `model`).

The status is KServe's: `modelStatus {states {activeModelState, targetModelState},
transitionStatus, copies {totalCopies, failedCopies}, lastFailureInfo {location, reason,
message, modelRevisionName, time}}`, `url` (the router's gRPC endpoint), and the conditions
`PredictorReady` and `Ready` (True once the model can answer: Loaded, Loading or Standby).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from mesh.controller.predictor import InvalidSpec

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
MODELMESH = "ModelMesh"
SECRET_KEY = "serving.kserve.io/secretKey"
DEFAULT_STORAGE_KEY = "default"
_BUCKET_SCHEMES = ("s3", "gs")


def is_modelmesh(obj: Mapping[str, Any]) -> bool:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return str(annotations.get(DEPLOYMENT_MODE, "")).lower() == MODELMESH.lower()


def as_predictor(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The InferenceService as a Predictor resource; InvalidSpec for what cannot be one."""
    metadata = obj.get("metadata") or {}
    out: dict[str, Any] = {"metadata": dict(metadata)}
    spec = obj.get("spec")
    predictor = spec.get("predictor") if isinstance(spec, Mapping) else None
    if not isinstance(predictor, Mapping):
        raise InvalidSpec("spec.predictor is required")
    model = predictor.get("model")
    if not isinstance(model, Mapping):
        others = sorted(k for k in predictor if isinstance(predictor[k], Mapping))
        raise InvalidSpec(
            "spec.predictor.model is required in ModelMesh mode"
            + (f" (the framework form {others} is not supported)" if others else "")
        )
    model_format = model.get("modelFormat")
    if not isinstance(model_format, Mapping) or not model_format.get("name"):
        raise InvalidSpec("spec.predictor.model.modelFormat.name is required")
    predictor_spec: dict[str, Any] = {
        "modelType": {
            "name": str(model_format["name"]),
            **({"version": str(model_format["version"])} if model_format.get("version") else {}),
        }
    }
    runtime = model.get("runtime")
    if runtime is not None and not isinstance(runtime, str):
        raise InvalidSpec("spec.predictor.model.runtime must be a runtime's name")
    if runtime:
        predictor_spec["runtime"] = {"name": runtime}
    storage = model.get("storage")
    if storage is not None and not isinstance(storage, Mapping):
        raise InvalidSpec("spec.predictor.model.storage must be an object")
    uri = model.get("storageUri")
    if uri:
        if storage is not None and storage.get("path"):
            raise InvalidSpec("give spec.predictor.model.storageUri or storage.path, not both")
        parts = urlsplit(str(uri))
        if parts.scheme not in _BUCKET_SCHEMES or not parts.netloc:
            raise InvalidSpec(
                f"storageUri {uri!r}: only s3://bucket/path and gs://bucket/path are understood "
                "(use storage {key, path} for other storage)"
            )
        key = (metadata.get("annotations") or {}).get(SECRET_KEY) or (storage or {}).get("key")
        given = (storage or {}).get("parameters") or {}
        if not isinstance(given, Mapping):
            raise InvalidSpec("spec.predictor.model.storage.parameters must be a map of strings")
        parameters = dict(given)
        parameters["bucket"] = parts.netloc
        predictor_spec["storage"] = {
            "key": str(key or DEFAULT_STORAGE_KEY),
            "path": parts.path.lstrip("/"),
            "parameters": parameters,
        }
    elif storage is not None:
        predictor_spec["storage"] = dict(storage)
    else:
        raise InvalidSpec("spec.predictor.model.storageUri or storage is required")
    out["spec"] = predictor_spec
    return out


def status(predictor_status: Mapping[str, Any], obj: Mapping[str, Any], now: str) -> dict[str, Any]:
    """KServe's InferenceService status from the Predictor status the mesh computed.
    Conditions keep their lastTransitionTime while their status stays."""
    failure = predictor_status.get("lastFailureInfo")
    model_status: dict[str, Any] = {
        "states": {
            "activeModelState": predictor_status.get("activeModelState", ""),
            "targetModelState": predictor_status.get("targetModelState", ""),
        },
        "transitionStatus": predictor_status.get("transitionStatus", ""),
        "copies": {
            "totalCopies": predictor_status.get("totalCopies", 0),
            "failedCopies": predictor_status.get("failedCopies", 0),
        },
    }
    if failure:
        info = {k: v for k, v in failure.items() if k != "modelId"}
        if failure.get("modelId"):
            info["modelRevisionName"] = failure["modelId"]
        model_status["lastFailureInfo"] = info
    ready = bool(predictor_status.get("available"))
    if ready:
        reason, message = "", ""
    elif failure:
        reason, message = str(failure.get("reason", "")), str(failure.get("message", ""))
    else:
        reason = "ModelLoading" if predictor_status.get("activeModelState") else "Pending"
        message = "the model has no copy that can answer yet"
    previous = {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []}
    conditions = []
    for kind in ("PredictorReady", "Ready"):
        value = "True" if ready else "False"
        old = previous.get(kind) or {}
        condition: dict[str, Any] = {
            "type": kind,
            "status": value,
            "lastTransitionTime": old.get("lastTransitionTime", now)
            if old.get("status") == value
            else now,
        }
        if reason:
            condition["reason"] = reason
        if message:
            condition["message"] = message
        conditions.append(condition)
    out: dict[str, Any] = {"modelStatus": model_status, "conditions": conditions}
    url = predictor_status.get("grpcEndpoint")
    if url:
        out["url"] = url
        out["address"] = {"url": url}
    return out


def predictor_status(isvc_status: Mapping[str, Any]) -> dict[str, Any]:
    """The Predictor-shaped status an InferenceService's status was made from (what the status
    rules and Events compare with)."""
    model_status = isvc_status.get("modelStatus") or {}
    if not model_status:
        return {}
    states = model_status.get("states") or {}
    copies = model_status.get("copies") or {}
    out: dict[str, Any] = {
        "activeModelState": states.get("activeModelState", ""),
        "targetModelState": states.get("targetModelState", ""),
        "transitionStatus": model_status.get("transitionStatus", ""),
        "totalCopies": copies.get("totalCopies", 0),
        "failedCopies": copies.get("failedCopies", 0),
    }
    failure = model_status.get("lastFailureInfo")
    if failure:
        info = {k: v for k, v in failure.items() if k != "modelRevisionName"}
        if failure.get("modelRevisionName"):
            info["modelId"] = failure["modelRevisionName"]
        out["lastFailureInfo"] = info
    return out
