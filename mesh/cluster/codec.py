"""Records to and from JSON, and where each lives under the mesh's root prefix.

Values are plain JSON objects (readable with `etcdctl get --prefix /mesh/`). Decoding is
strict about types and tolerant of fields it does not know (a newer writer), and a value that
cannot be decoded raises StoreError naming the key, so one bad value cannot poison a mirror.

A model record names its files in a nested "storage" object (mesh.storageref.StorageRef).
One written before that held "storage_key" and "storage_path" at the top and the puller's
options among its runtime options as "storage.*": it is read into the same record (options
that do not parse stay where they were, and the pod refuses them at load, as the puller did).
`legacy_encoding` writes a record the old way, for comparing against one stored so.
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
from mesh.errors import InvalidRequest, StoreError
from mesh.storageref import LEGACY_PREFIX, StorageRef, Unpack, split_legacy_options

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


def legacy_encoding(record: ModelRecord) -> bytes:
    """`record` as a writer from before StorageRef wrote it (top-level storage_key and
    storage_path, the puller's options as "storage.*" options)."""
    data = dataclasses.asdict(record)
    storage = data.pop("storage")
    data["storage_key"], data["storage_path"] = storage["key"], storage["path"]
    pulled = {LEGACY_PREFIX + k: v for k, v in record.storage.options().items()}
    data["options"] = {**data["options"], **pulled}
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
        if cls is ModelRecord:
            kwargs["storage"], options = _model_storage(raw)
            if options is not None:
                kwargs["options"] = options
        record = cls(**kwargs)
        _check_types(record)
        return record
    except (ValueError, TypeError, KeyError) as exc:
        raise StoreError(f"cannot decode {cls.__name__} at {key!r}: {exc}") from exc


_STORAGE_FIELDS = ("key", "path", "bucket", "sha256")


def _model_storage(raw: dict[str, Any]) -> tuple[StorageRef, dict[str, str] | None]:
    """A model record's StorageRef, and its options when the old shape moved some out."""
    storage = raw.get("storage")
    if storage is not None:
        if not isinstance(storage, dict):
            raise TypeError("storage must be an object")
        strings = {k: storage.get(k, "") for k in _STORAGE_FIELDS}
        if not all(isinstance(v, str) for v in strings.values()):
            raise TypeError(f"storage's {', '.join(_STORAGE_FIELDS)} must be strings")
        return StorageRef(**strings, unpack=Unpack(storage.get("unpack", "auto"))), None
    key, path = raw.get("storage_key", ""), raw.get("storage_path", "")
    if not isinstance(key, str) or not isinstance(path, str):
        raise TypeError("storage_key and storage_path must be strings")
    options = raw.get("options")
    if not isinstance(options, dict) or not any(k.startswith(LEGACY_PREFIX) for k in options):
        return StorageRef(key, path), None
    runtime, pulled = split_legacy_options(options)
    if not all(isinstance(v, str) for v in pulled.values()):
        return StorageRef(key, path), None  # no option the puller took: left as they were
    try:
        return StorageRef.parse(key, path, pulled), runtime
    except InvalidRequest:
        return StorageRef(key, path), None


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
