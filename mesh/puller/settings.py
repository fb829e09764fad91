"""The puller's settings, from flags and MESH_PULLER_* environment variables (mesh.settings).

How it fails: a bad value raises pydantic's ValidationError before anything starts (`mesh
puller` exits with status 2 and names the field).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator

from mesh.settings import CommandSettings, Flag, MetricsSettings, Nested
from mesh.units import ByteSize

_HOST_PORT = re.compile(r"(?P<host>\[[0-9a-fA-F:.]+\]|[^:\[\]]+):(?P<port>\d+)")


class PullerMetrics(MetricsSettings):
    """2113, not 2112: the pod beside it has 2112."""

    metrics_port: Annotated[int | None, Flag(off="no-metrics")] = Field(
        2113, ge=0, le=65535, description="Prometheus port (unset: no /metrics endpoint)"
    )


class PullerSettings(CommandSettings, env_prefix="MESH_PULLER_"):
    """Every knob of `mesh puller`; durations in seconds, sizes in bytes ("16Mi" works)."""

    listen: str = Field(
        "8086",
        description="where the pod reaches it: a port on loopback, host:port, or unix:/path",
    )
    metrics: Annotated[PullerMetrics, Nested(prefix="")] = PullerMetrics()
    cache_dir: Path = Field(
        Path("/models/cache"), description="the disk cache, on the volume shared with the pod"
    )
    cache_bytes: ByteSize = Field(10 * 2**30, gt=0, description="the cache's budget, e.g. 20Gi")
    storage_config: Path | None = Field(
        Path("/storage-config"),
        description="the storage-config Secret's mount (a directory) or a JSON file",
    )
    pvc_root: Path = Field(
        Path("/pvc_mounts"), description="where pvc entries' claims are mounted: ROOT/CLAIM"
    )
    concurrency: int = Field(
        16, ge=1, le=1024, description="requests to storage in flight, across all downloads"
    )
    range_size: ByteSize = Field(
        16 * 2**20,
        ge=64 * 2**10,
        description="objects larger than this are fetched in ranges of this size, in parallel",
    )
    retries: int = Field(
        5,
        ge=0,
        le=100,
        description="attempts after a failure (per range without progress, per restart of a "
        "changed object)",
    )
    retry_initial: float = Field(0.2, gt=0, description="first backoff in seconds")
    retry_max: float = Field(5.0, gt=0, description="longest backoff in seconds")
    connect_timeout: float = Field(5.0, gt=0, description="seconds to connect")
    request_timeout: float = Field(
        300.0, gt=0, description="seconds per request, body included (one range)"
    )
    stall_timeout: float = Field(
        30.0, gt=0, description="seconds without a byte before the request is retried"
    )
    verify_checksums: bool = Field(
        True, description="check S3 ETags as MD5 digests of what arrived"
    )
    # And never past cache_bytes.
    archive_max_bytes: ByteSize = Field(16 * 2**30, gt=0, description="largest unpacked archive")
    archive_max_members: int = Field(100_000, ge=1, description="most archive members")
    drain_timeout: float = Field(
        10.0, ge=0, description="seconds SIGTERM waits for pulls in flight"
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR")
    log_json: bool = Field(False, description="log JSON lines")

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
