"""The router's settings, from flags and MESH_ROUTER_* environment variables (mesh.settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from mesh.settings import (
    ClientTLS,
    CommandSettings,
    EtcdSettings,
    Flag,
    Nested,
    ServerSettings,
    ServerTLS,
)
from mesh.units import ByteSize


class RouterEtcd(EtcdSettings):
    """A router always has a cluster store: etcd on loopback unless told otherwise."""

    endpoints: Annotated[str, Flag(primary=True)] = Field(
        "http://127.0.0.1:2379",
        description="etcd endpoints, e.g. http://etcd-0:2379,http://etcd-1:2379",
    )


class PodClientTLS(ClientTLS):
    """How the router reaches pods that serve TLS (`mesh pod --tls-cert`)."""

    ca: Path | None = Field(
        None, description="CA the pods' certificates chain to (set: TLS to every pod)"
    )
    cert: Path | None = Field(
        None, description="the router's certificate for the pods (they require one)"
    )
    key: Path | None = Field(None, description="the router's certificate's private key")
    server_name: str | None = Field(
        None,
        description="name every pod's certificate must carry, for pods dialled by IP that share "
        "one certificate (unset: the pod's advertised host)",
    )


class RouterSettings(CommandSettings, env_prefix="MESH_ROUTER_"):
    """Every knob of `mesh router`; durations in seconds, sizes in bytes ("64Mi" works)."""

    server: Annotated[ServerSettings, Nested(prefix="")] = ServerSettings(port=8033, rest_port=8008)
    etcd: Annotated[RouterEtcd, Nested(section="cluster store")] = RouterEtcd()
    # TLS on the client-facing ports (gRPC and REST).
    tls: Annotated[ServerTLS, Nested(section="TLS")] = ServerTLS()
    # TLS to the pods' gRPC and data ports (mesh.tls); pods with --tls-cert require it.
    pod_tls: Annotated[PodClientTLS, Nested(section="TLS to pods")] = PodClientTLS()
    router_id: str | None = Field(
        None, description="this router's name (unset: host name and a suffix)"
    )
    max_message_bytes: ByteSize = Field(64 * 2**20, gt=0, description="largest request or response")
    # mesh.frames: a frame costs the router less CPU than a grpc.aio call (docs/router.md).
    pod_frames: bool = Field(
        True,
        description="send unary inference to a pod over its data port (mesh.frames) where it "
        "advertises one; off: over gRPC to every pod",
    )
    forward_attempts: int = Field(3, ge=1, description="copies a request may try")
    load_attempts: int = Field(3, ge=1, description="pods a cache miss may try")
    load_timeout: float = Field(120.0, gt=0, description="seconds a cache miss may take")
    lease_ttl: int = Field(10, ge=2, description="seconds this router's load claims live")
    vanished_pod_grace: float = Field(
        10.0,
        ge=0,
        description="seconds a pod whose records vanished without draining (its lease expired "
        "while etcd was away) still gets requests for the models it held, and a miss that "
        "finds no pod waits for one to register (about one pod lease TTL; 0: never)",
    )
    failure_ttl: float = Field(
        900.0,
        gt=0,
        description="seconds a failed load is remembered; --failure-attempts of them within it "
        "stop the model from being tried until one expires, its registration changes, or "
        "`mesh load MODEL` asks for a retry",
    )
    failure_attempts: int = Field(
        3, ge=1, description="failed loads within --failure-ttl that stop retries"
    )
    max_held_requests: int = Field(
        256,
        ge=0,
        description="requests held at once, within their deadline, while a pod starts for a "
        "pool with none (scale from zero; more are RESOURCE_EXHAUSTED; 0: none held)",
    )
    attempt_timeout: float = Field(
        5.0,
        ge=0,
        description="seconds a forward waits on a pod before asking it ServerLive; a pod that "
        "does not answer within --probe-timeout (packets dropped, host frozen) is left and the "
        "request retried on another copy, a slow one that answers is waited on (0: wait until "
        "the client's deadline)",
    )
    probe_timeout: float = Field(
        1.0, gt=0, description="seconds a probed pod has to answer ServerLive"
    )
    leader_interval: float = Field(
        5.0,
        gt=0,
        description="seconds between the elected router's rounds (min copies, cluster totals)",
    )
    # Copy scaling (docs/placement.md).
    copy_add_rate: float = Field(
        50.0, gt=0, description="requests/s per copy above which a copy is added"
    )
    copy_add_after: float = Field(
        30.0, ge=0, description="seconds above --copy-add-rate before a copy is added"
    )
    copy_remove_rate: float = Field(
        5.0, ge=0, description="requests/s per copy below which an extra copy is removed"
    )
    copy_remove_after: float = Field(
        300.0, ge=0, description="seconds below --copy-remove-rate before it is removed"
    )
    copy_half_life: float = Field(
        15.0, gt=0, description="half-life in seconds of the request rate's moving average"
    )
    management_token: str | None = Field(
        None,
        description='bearer token the management API requires ("authorization: Bearer <token>")',
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR")
    log_json: bool = Field(False, description="log JSON lines")
