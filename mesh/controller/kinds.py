"""The kinds of resource the controller turns into models: Predictors and InferenceServices.

One reconcile loop serves both (mesh.controller.controller); a kind says which objects are its
own, how one reads as a Predictor, and how the Predictor-shaped status is written back.

Both kinds become a vmodel named after the resource, so a Predictor and an InferenceService of
one name in one namespace would be one name for clients: `holds_name` says which of the two
has it (docs/kubernetes.md), and the controller refuses the other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mesh.controller import inferenceservice as isvc
from mesh.controller.kube import FINALIZER

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
    # As `kubectl get` names it, for messages.
    title: str = ""
    # Of two objects of one name claimed at once, the lower rank holds it (`holds_name`).
    rank: int = 0

    def contends(self, obj: Obj) -> bool:
        """Whether the object claims its name in the mesh: it is ours, or it still carries our
        finalizer (its clean-up, which deletes the vmodel of that name, is to come)."""
        return self.ours(obj) or FINALIZER in _finalizers(obj)


def _finalizers(obj: Obj) -> list[str]:
    return list((obj.get("metadata") or {}).get("finalizers") or [])


def holds_name(obj: Obj, kind: ResourceKind, other: Obj, other_kind: ResourceKind) -> bool:
    """Whether `obj` holds the name it shares with `other` (a resource of another kind), both
    claiming it: the one already in the mesh (our finalizer on it, and not on the other); else
    the older (creationTimestamp); created in the same second, the kind of lower rank (the
    Predictor). Pure, and the same answer on every replica and after a restart."""
    mine, theirs = FINALIZER in _finalizers(obj), FINALIZER in _finalizers(other)
    if mine != theirs:
        return mine

    def created(o: Obj) -> str:  # RFC 3339 in UTC ("...Z"): ordered as strings
        return str((o.get("metadata") or {}).get("creationTimestamp") or "")

    return (created(obj), kind.rank) < (created(other), other_kind.rank)


PREDICTOR = ResourceKind(
    "predictor", lambda obj: True, _same, _status_as_is, dict, title="Predictor", rank=0
)
INFERENCE_SERVICE = ResourceKind(
    "inferenceservice",
    isvc.is_modelmesh,
    isvc.as_predictor,
    isvc.status,
    isvc.predictor_status,
    title="InferenceService",
    rank=1,
)
