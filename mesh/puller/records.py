"""The puller's records: what a pull returns and what the cache holds. No credentials in any."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The gRPC service name: the server's and the client's (the pod's), without the server's imports.
PULLER_SERVICE = "mesh.puller.v1.Puller"


@dataclass(frozen=True, slots=True)
class PullResult:
    """A pulled artifact: `local_path` is a file, or a directory for a prefix or an archive."""

    model_id: str
    local_path: Path
    size: int
    cache_hit: bool
    seconds: float


@dataclass(frozen=True, slots=True)
class ArtifactView:
    storage_key: str
    # Where it came from, as people read it: s3://bucket/path, file:///mnt/x/path, ...
    source: str
    local_path: Path
    size: int
    # Model ids holding it; an artifact with any is never evicted.
    models: tuple[str, ...]
    # Unix seconds.
    last_used: float


@dataclass(frozen=True, slots=True)
class CacheView:
    capacity: int
    # Bytes of artifacts in the cache, and bytes set aside for downloads in progress.
    used: int
    reserved: int
    # Bytes of artifacts some model holds.
    in_use: int
    # Most recently used first.
    artifacts: tuple[ArtifactView, ...]
