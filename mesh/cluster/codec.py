"""Records to and from JSON, and where each lives under the mesh's root prefix.

Values are plain JSON objects (readable with `etcdctl get --prefix /mesh/`). Decoding is
strict about types and tolerant of fields it does not know (a newer writer), and a value that
cannot be decoded raises StoreError naming the key, so one bad value cannot poison a mirror.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, TypeVar

from mesh.cluster.records import (
    InstanceRecord,
    ModelRecord,
    PlacementRecord,
    PlacementState,
    VModelRecord,
)
from mesh.errors import StoreError

R = TypeVar("R")

_TUPLES = {"pinned_pods", "runtimes", "host_models", "host_model_bytes"}


class Keys:
    """The key layout under one root prefix (several meshes may share an etcd).

    >>> Keys("/mesh/").placement("m", "pod-1")
    '/mesh/placements/m/pod-1'
    """

    def __init__(self, root: str = "/mesh/") -> None:
        if not root.endswith("/"):
            root += "/"
        self.root = root
        self.models = root + "models/"
        self.vmodels = root + "vmodels/"
        self.instances = root + "instances/"
        self.placements = root + "placements/"
        self.claims = root + "claims/"
        self.leader = root + "leader"

    def model(self, model_id: str) -> str:
        return self.models + model_id

    def vmodel(self, vmodel_id: str) -> str:
        return self.vmodels + vmodel_id

    def instance(self, pod_id: str) -> str:
        return self.instances + pod_id

    def placement(self, model_id: str, pod_id: str) -> str:
        return f"{self.placements}{model_id}/{pod_id}"

    def claim(self, model_id: str) -> str:
        """Held by the router that is loading the model somewhere: one load per mesh."""
        return self.claims + model_id

    def placement_ids(self, key: str) -> tuple[str, str]:
        """(model_id, pod_id) of a placement key; pod ids hold no '/'."""
        model_id, _, pod_id = key.removeprefix(self.placements).rpartition("/")
        return model_id, pod_id


def encode(record: Any) -> bytes:
    data = dataclasses.asdict(record)
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def decode(cls: type[R], key: str, value: bytes) -> R:
    try:
        raw = json.loads(value)
        if not isinstance(raw, dict):
            raise TypeError("not a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        kwargs = {k: v for k, v in raw.items() if k in names}
        for name in _TUPLES & kwargs.keys():
            kwargs[name] = tuple(kwargs[name])
        if cls is PlacementRecord:
            kwargs["state"] = PlacementState(kwargs["state"])
        record = cls(**kwargs)
        _check_types(record)
        return record
    except (ValueError, TypeError, KeyError) as exc:
        raise StoreError(f"cannot decode {cls.__name__} at {key!r}: {exc}") from exc


def _check_types(record: Any) -> None:
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        if kind == "str" and not isinstance(value, str):
            raise TypeError(f"{f.name} must be a string")
        if kind == "int" and (not isinstance(value, int) or isinstance(value, bool)):
            raise TypeError(f"{f.name} must be an integer")
        if kind == "float" and not isinstance(value, int | float):
            raise TypeError(f"{f.name} must be a number")
        if kind == "bool" and not isinstance(value, bool):
            raise TypeError(f"{f.name} must be true or false")
        if kind == "tuple[int, ...]" and not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise TypeError(f"{f.name} must be a list of integers")


RECORD_TYPES = (ModelRecord, VModelRecord, InstanceRecord, PlacementRecord)
