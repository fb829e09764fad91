"""The model cache's value types: where a model comes from, its place in the cache, a load's
outcome, a remembered failure, and the views the cache publishes (mesh.pod.cache keeps the
ledger of these)."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mesh.errors import MeshError
from mesh.pod.hosttier import DemotedView
from mesh.runtimes.base import LoadedModel, ModelConfig


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where a model's files are and how to load them."""

    model_id: str
    format: str
    file: Path
    config: ModelConfig = field(default_factory=ModelConfig)
    options: Mapping[str, str] = field(default_factory=dict)
    # The model is its file's whole directory (a Hugging Face layout), not the file alone.
    directory: bool = False
    # An adapter's base model id: loaded first, on this pod, and kept while the adapter is.
    base: str | None = None

    def disk_bytes(self) -> int:
        try:
            if self.directory:
                return sum(p.stat().st_size for p in self.file.parent.iterdir() if p.is_file())
            return self.file.stat().st_size
        except OSError:
            return 0


class State(enum.Enum):
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"


class CachedModel:
    """One model's place in the cache. Mutated only on the event loop."""

    __slots__ = (
        "artifact_bytes",
        "dependents",
        "error",
        "estimated",
        "gone",
        "host_measured",
        "idle",
        "in_flight",
        "last_used",
        "last_used_wall",
        "loaded_at",
        "measured",
        "model",
        "model_id",
        "settled",
        "size",
        "source",
        "state",
    )

    def __init__(
        self, source: ModelSource, estimated: int, now: float, artifact_bytes: int = 0
    ) -> None:
        self.model_id = source.model_id
        self.source = source
        self.artifact_bytes = artifact_bytes  # its files' bytes on disk when it was claimed
        self.state = State.LOADING
        self.model: LoadedModel | None = None
        self.size = estimated
        self.estimated = estimated
        self.measured: int | None = None
        # On an accelerator: what the load took of the host's memory besides (RSS delta).
        self.host_measured: int | None = None
        self.last_used = now
        self.last_used_wall = 0.0
        self.loaded_at = 0.0
        self.in_flight = 0
        self.error: MeshError | None = None
        self.settled = asyncio.Event()  # the load ended, either way
        self.gone = asyncio.Event()  # the model left the cache
        self.idle: asyncio.Event | None = None  # set when in_flight drops to 0, while unloading
        self.dependents: set[str] = set()  # adapters loaded on this base


@dataclass(frozen=True, slots=True)
class LoadOutcome:
    model_id: str
    size: int
    measured: int | None
    estimated: int
    seconds: float
    already_loaded: bool
    evicted: tuple[str, ...] = ()
    # Brought back from the host tier (no file read, no pull).
    promoted: bool = False
    # The model's files on disk (0: unknown).
    artifact_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Failure:
    model_id: str
    format: str
    error: str
    kind: type[MeshError]
    at: float  # monotonic
    at_wall: float


@dataclass(frozen=True, slots=True)
class ModelView:
    model_id: str
    format: str
    state: str
    size: int
    measured: int | None
    estimated: int
    last_used: float  # unix seconds, 0 if never used
    in_flight: int
    loaded_at: float
    host_measured: int | None = None


@dataclass(frozen=True, slots=True)
class CacheView:
    capacity: int
    used: int
    loading: int
    models: tuple[ModelView, ...]  # most recently used first
    failures: tuple[Failure, ...]
    host_capacity: int = 0  # 0: no host tier
    host_used: int = 0
    demoted: tuple[DemotedView, ...] = ()  # in the host tier, most recently used first
    size_factors: Mapping[str, float] = field(default_factory=dict)  # SizeFactors.published
