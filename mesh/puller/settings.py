"""The puller's settings, from flags and MESH_PULLER_* environment variables, validated at start.

How it fails: a bad value raises pydantic's ValidationError before anything starts (`mesh
puller` exits with status 2 and names the field).
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mesh.units import ByteSize

_HOST_PORT = re.compile(r"(?P<host>\[[0-9a-fA-F:.]+\]|[^:\[\]]+):(?P<port>\d+)")


class PullerSettings(BaseSettings):
    """Every knob of `mesh puller`; durations in seconds, sizes in bytes ("16Mi" works)."""

    model_config = SettingsConfigDict(env_prefix="MESH_PULLER_", extra="forbid")

    # Where the pod reaches it: a port on loopback ("8086"), "host:port", or "unix:/path".
    listen: str = "8086"
    # Prometheus endpoint; none: no endpoint. 2113, not 2112: the pod beside it has 2112.
    metrics_port: int | None = Field(2113, ge=0, le=65535)
    metrics_host: str = "0.0.0.0"
    # The disk cache, on the volume shared with the pod, and its budget in bytes.
    cache_dir: Path = Path("/models/cache")
    cache_bytes: ByteSize = Field(10 * 2**30, gt=0)
    # The storage-config Secret as mounted (a directory) or one JSON file.
    storage_config: Path | None = Path("/storage-config")
    # Where `pvc` entries' claims are mounted: <pvc_root>/<claim name>.
    pvc_root: Path = Path("/pvc_mounts")
    # Requests to storage in flight at once, across all downloads.
    concurrency: int = Field(16, ge=1, le=1024)
    # Objects larger than this are fetched in ranges of this size, in parallel.
    range_size: ByteSize = Field(16 * 2**20, ge=64 * 2**10)
    # Attempts after a failure (per range without progress, per restart of a changed object).
    retries: int = Field(5, ge=0, le=100)
    retry_initial: float = Field(0.2, gt=0)
    retry_max: float = Field(5.0, gt=0)
    connect_timeout: float = Field(5.0, gt=0)
    # One request, body included (a range of range_size bytes).
    request_timeout: float = Field(300.0, gt=0)
    # No byte received for this long: the request is retried.
    stall_timeout: float = Field(30.0, gt=0)
    # Check S3 ETags as MD5 digests of what arrived.
    verify_checksums: bool = True
    # An archive unpacks to at most this many bytes and members (and never past cache_bytes).
    archive_max_bytes: ByteSize = Field(16 * 2**30, gt=0)
    archive_max_members: int = Field(100_000, ge=1)
    # Seconds SIGTERM waits for pulls in flight.
    drain_timeout: float = Field(10.0, ge=0)
    log_level: str = "INFO"
    log_json: bool = False

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        value = value.strip()
        if value.startswith("unix:"):
            if len(value) <= len("unix:"):
                raise ValueError("unix: needs a path, e.g. unix:/run/mesh/puller.sock")
            return value
        port = value if value.isdigit() else None
        match = _HOST_PORT.fullmatch(value)
        if match:
            port = match.group("port")
        if port is None or not 0 <= int(port) <= 65535:
            raise ValueError(f"listen {value!r}: give a port, host:port or unix:/path")
        return value

    def grpc_address(self) -> str:
        """What grpc's add_insecure_port takes: a bare port listens on loopback only (the
        pod is in the same network namespace; nothing else should pull)."""
        return f"127.0.0.1:{self.listen}" if self.listen.isdigit() else self.listen
