"""The kinds of resource the controller turns into models: Predictors and InferenceServices.

One reconcile loop serves both (mesh.controller.controller); a kind says which objects are its
own, how one reads as a Predictor, and how the Predictor-shaped status is written back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mesh.controller import inferenceservice as isvc

Obj = Mapping[str, Any]


def _same(obj: Obj) -> dict[str, Any]:
    return dict(obj)


def _status_as_is(status: Mapping[str, Any], obj: Obj, now: str) -> dict[str, Any]:
    return dict(status)


@dataclass(frozen=True, slots=True)
class ResourceKind:
    name: str  # for logs
    # Whether the object is this controller's to serve (one that is not gets no finalizer).
    ours: Callable[[Obj], bool]
    # The object as a Predictor resource (raises predictor.InvalidSpec).
    as_predictor: Callable[[Obj], dict[str, Any]]
    # The status to write from the Predictor-shaped one.
    render: Callable[[Mapping[str, Any], Obj, str], dict[str, Any]]
    # The object's status in Predictor shape (what the rules compare with).
    previous: Callable[[Mapping[str, Any]], dict[str, Any]]


PREDICTOR = ResourceKind("predictor", lambda obj: True, _same, _status_as_is, dict)
INFERENCE_SERVICE = ResourceKind(
    "inferenceservice",
    isvc.is_modelmesh,
    isvc.as_predictor,
    isvc.status,
    isvc.predictor_status,
)
