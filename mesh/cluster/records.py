"""The records the mesh keeps in its store: frozen, versioned, serialised to JSON by codec.py.

| key under the root prefix       | record          | lifetime                    |
|---------------------------------|-----------------|-----------------------------|
| models/{model_id}               | ModelRecord     | until unregistered          |
| vmodels/{vmodel_id}             | VModelRecord    | until deleted               |
| instances/{pod_id}              | InstanceRecord  | the pod's lease             |
| placements/{model_id}/{pod_id}  | PlacementRecord | the pod's lease             |

Times are unix seconds (floats); sizes are bytes.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from mesh.storageref import StorageRef

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """A registered model: what it is, where its files are, and how it may be placed."""

    model_id: str
    format: str
    # Where its files are, with the puller's options (JSON: "storage": {"key", "path",
    # "bucket", "unpack", "sha256"}). Records written before it held top-level "storage_key"
    # and "storage_path", and the puller's options among `options` as "storage.*": the codec
    # reads those into this.
    storage: StorageRef = field(default_factory=StorageRef)
    # Bytes the model is expected to take once loaded; 0 when unknown (placement then uses
    # what a copy measured, else its default).
    size_estimate: int = 0
    # Bytes the model's first copy was measured to take, written by the router that loaded it
    # and kept through evictions (0: never loaded since it was registered as it is).
    measured_size: int = 0
    # What copies measured per runtime and device tier ("xgboost/host", "torch/cuda"; keys
    # from `size_key`): a pod is charged the size measured on its kind of device, kept through
    # evictions like `measured_size` (which stays the first measure, whatever the tier).
    measured_sizes: Mapping[str, int] = field(default_factory=dict)
    # The model's files on disk (0: unknown): given at registration, else written by the router
    # from the first pod that loaded it. A model with no measured size is estimated from this
    # times its format's factor across the mesh (InstanceRecord.size_factors).
    artifact_bytes: int = 0
    # Copies the mesh keeps loaded even when idle (0: loaded on demand only).
    min_copies: int = 0
    # Upper bound on copies (0: no bound beyond the number of pods).
    max_copies: int = 0
    # Pods this model may only be placed on (empty: any pod).
    pinned_pods: tuple[str, ...] = ()
    # Labels a pod must carry to take this model.
    required_labels: Mapping[str, str] = field(default_factory=dict)
    # Labels of the pods the model should go to when one of them can take it without
    # evicting (a Predictor's `gpu: preferred`): a preference, never a constraint.
    preferred_labels: Mapping[str, str] = field(default_factory=dict)
    # Runtime options passed to LoadModel: the runtime's alone.
    options: Mapping[str, str] = field(default_factory=dict)
    registered_at: float = 0.0
    # A LoRA adapter's base model id: the adapter is loaded on a pod holding the base.
    base: str = ""
    version: int = SCHEMA_VERSION


def device_tier(device: str) -> str:
    """The kind of device an instance record's `device` names: "cuda" for "cuda:0", "host"
    for the host's memory (or a pod that measured none)."""
    return device.split(":", 1)[0] or "host"


def size_key(runtime: str, device: str) -> str:
    """The key of `ModelRecord.measured_sizes` for a copy loaded by `runtime` on `device`."""
    return f"{runtime}/{device_tier(device)}"


@dataclass(frozen=True, slots=True)
class VModelRecord:
    """An alias: clients name the vmodel, the mesh serves its active target model."""

    vmodel_id: str
    target: str
    # The model served while `target` loads (a transition); empty when none runs.
    previous: str = ""
    version: int = SCHEMA_VERSION

    @property
    def active(self) -> str:
        return self.previous or self.target


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """A pod, as it publishes itself under its lease."""

    pod_id: str
    address: str
    capacity: int
    used: int = 0
    model_count: int = 0
    # Last use of the pod's least recently used model (0: the pod holds none).
    lru_time: float = 0.0
    loading_count: int = 0
    in_flight: int = 0
    draining: bool = False
    runtimes: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    updated_at: float = 0.0
    # The host tier (`--host-tier`): its bytes, what its demoted models take, and their ids
    # (most recently used first, at most HOST_MODELS_PUBLISHED): placement sends a miss for one
    # of them here, where it comes back without a pull.
    host_capacity: int = 0
    host_used: int = 0
    host_models: tuple[str, ...] = ()
    # What each of host_models takes in the host tier, in the same order (empty: not published,
    # by a pod from before this field).
    host_model_bytes: tuple[int, ...] = ()
    # The pod's device as measured (NVML, torch, or the host's memory); 0: not measured.
    device: str = ""
    device_total: int = 0
    device_used: int = 0
    # Which process holds the pod id (random per process): a pod takes over its own record
    # from an expired lease, and refuses an id another live process holds.
    incarnation: str = ""
    # What the pod learned from its loads: bytes in memory per byte on disk, per format,
    # rounded (mesh.pod.sizing.SizeFactors.published) so that a load rarely rewrites the record.
    size_factors: Mapping[str, float] = field(default_factory=dict)
    # host:port of the pod's frame listener (mesh.frames), which routers use for unary
    # inference instead of gRPC; empty: the pod has none (or predates it), and gRPC serves all.
    data_address: str = ""
    version: int = SCHEMA_VERSION


# An instance record names at most this many host-tier models: the record stays small (etcd
# values are bounded) however many small models a large host tier holds.
HOST_MODELS_PUBLISHED = 512


class PlacementState(enum.StrEnum):
    LOADING = "loading"
    LOADED = "loaded"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class PlacementRecord:
    """One copy of a model on one pod (or one failed attempt at it)."""

    model_id: str
    pod_id: str
    state: PlacementState
    since: float
    size: int = 0
    error: str = ""
    last_used: float = 0.0
    version: int = SCHEMA_VERSION
