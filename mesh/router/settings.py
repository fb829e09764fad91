"""The router's settings, from flags and MESH_ROUTER_* environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from mesh.units import ByteSize


class RouterSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESH_ROUTER_", extra="forbid")

    host: str = "0.0.0.0"
    port: int = Field(8033, ge=0, le=65535)
    # The v2 REST front (and the routes others mount on it); None: no REST.
    rest_port: int | None = Field(8008, ge=0, le=65535)
    metrics_port: int | None = Field(2112, ge=0, le=65535)
    etcd: str = "http://127.0.0.1:2379"
    etcd_prefix: str = "/mesh/"
    etcd_ca: Path | None = None
    etcd_cert: Path | None = None
    etcd_key: Path | None = None
    router_id: str | None = None
    max_message_bytes: ByteSize = Field(64 * 2**20, gt=0)
    forward_attempts: int = Field(3, ge=1)
    load_attempts: int = Field(3, ge=1)
    load_timeout: float = Field(120.0, gt=0)
    lease_ttl: int = Field(10, ge=2)
    # How long a pod whose records vanished without draining (its lease expired while etcd
    # was away) still gets requests for the models it held, and how long a miss that finds
    # no pod waits for one to register (docs/router.md). About one pod lease TTL; 0: never.
    vanished_pod_grace: float = Field(10.0, ge=0)
    # A failed load is remembered this many seconds; failure_attempts of them within that time
    # stop the model from being tried until one expires, its registration changes, or
    # `mesh load MODEL` asks for a retry.
    failure_ttl: float = Field(900.0, gt=0)
    failure_attempts: int = Field(3, ge=1)
    # How often the elected router keeps min_copies loaded and publishes cluster totals.
    leader_interval: float = Field(5.0, gt=0)
    # Copy scaling (docs/placement.md): a copy is added when a model's requests per second per
    # copy stay above copy_add_rate for copy_add_after seconds, and an extra copy removed when
    # they stay below copy_remove_rate for copy_remove_after seconds.
    copy_add_rate: float = Field(50.0, gt=0)
    copy_add_after: float = Field(30.0, ge=0)
    copy_remove_rate: float = Field(5.0, ge=0)
    copy_remove_after: float = Field(300.0, ge=0)
    # Half-life in seconds of the request rate's moving average.
    copy_half_life: float = Field(15.0, gt=0)
    # TLS on the client-facing port; with tls_ca, clients must present certificates (mTLS).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    # Required as "authorization: Bearer <token>" on the management API when set.
    management_token: str | None = None
    log_level: str = "INFO"
    log_json: bool = False
