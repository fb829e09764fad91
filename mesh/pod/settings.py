"""The pod's settings, from flags and MESH_POD_* environment variables (mesh.settings),
validated at start."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, field_validator, model_validator

from mesh.addresses import advertised
from mesh.ids import RULE, is_valid_id
from mesh.settings import CommandSettings, EtcdSettings, Flag, Nested, ServerSettings, ServerTLS
from mesh.units import ByteSize, parse_bytes

__all__ = ["ByteSize", "PodSettings", "parse_bytes"]

_MEMBERSHIP = "cluster membership"


class PodEtcd(EtcdSettings):
    """A pod without etcd endpoints runs standalone."""

    endpoints: Annotated[str | None, Flag(primary=True)] = Field(
        None,
        description="etcd endpoints, e.g. http://etcd-0:2379,http://etcd-1:2379 "
        "(unset: the pod runs standalone)",
    )


class PodTLS(ServerTLS):
    """TLS on the pod's ports (gRPC, data and REST; metrics stay plaintext), always mutual:
    its gRPC port is also the control API (LoadModel, UnloadModel), so a certificate without a
    CA to check clients by does not validate, nor does a certificate without its key."""

    cert: Path | None = Field(
        None, description="certificate of the pod's gRPC, data and REST ports (unset: plaintext)"
    )
    key: Path | None = Field(None, description="the certificate's private key")
    ca: Path | None = Field(
        None,
        description="CA that the certificates of the pod's clients (routers) must chain to; "
        "required with --tls-cert",
    )

    @model_validator(mode="after")
    def _mutual(self) -> Self:
        # ServerTLS refuses half a setting; the pod also refuses TLS that takes any client.
        if self.cert is not None and self.ca is None:
            raise ValueError(
                "--tls-cert needs --tls-ca: the pod takes only clients with a certificate "
                "(mutual TLS), since its gRPC port loads and unloads models"
            )
        return self


class PodSettings(CommandSettings, env_prefix="MESH_POD_"):
    """Every knob of `mesh pod`; durations in seconds, sizes in bytes ("4Gi" works)."""

    # A standalone pod can serve v2 REST too (rest_port); in a mesh the router does.
    server: Annotated[ServerSettings, Nested(prefix="")] = ServerSettings(port=8085)
    models: Path | None = Field(
        None, description="serve every model under this directory by name, loaded on first use"
    )
    capacity: ByteSize | None = Field(
        None,
        gt=0,
        description="bytes of models to hold, e.g. 4Gi (unset: the container's memory limit, "
        "or the GPU's memory, less --reserve)",
    )
    reserve: ByteSize = Field(
        512 * 2**20, ge=0, description="memory kept back from the default capacity"
    )
    # Read before the cgroup's: MESH_POD_MEMORY_LIMIT from `resourceFieldRef: {resource:
    # limits.memory}`.
    memory_limit: ByteSize | None = Field(
        None, gt=0, description="the container's memory limit (unset: read from the cgroup)"
    )
    # On a CPU-only pod the default capacity leaves this much of the memory to the host tier.
    host_tier: ByteSize = Field(
        0,
        ge=0,
        description="bytes of host memory for models evicted from the device: they come back "
        "on their next request without the disk or the puller (0: none)",
    )
    unload_leak_bound: ByteSize = Field(
        256 * 2**20,
        ge=0,
        description="device bytes a runtime may keep after its unloads before the pod recycles "
        "(drains and exits with status 75 to be replaced)",
    )
    unload_settle: float = Field(
        2.0, ge=0, description="seconds an unload's device memory may take to come back"
    )
    # mesh.frames: a frame costs the router less CPU than a grpc.aio call (docs/pod.md).
    data_port: Annotated[int | None, Flag(off="no-data-port")] = Field(
        0,
        ge=0,
        le=65535,
        description="port of the data transport routers use for unary inference instead of "
        "gRPC (0 picks a free one; unset: none, routers use the gRPC port)",
    )
    # mesh.tls: the routers present a certificate (--pod-tls-cert on theirs).
    tls: Annotated[PodTLS, Nested(section="TLS")] = PodTLS()
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where models run")
    device_index: int = Field(0, ge=0, description="GPU index")
    workers: int = Field(4, ge=1, description="inference threads; requests beyond them queue")
    # mesh.pod.inline: the hand-off to a worker costs about what a small predict does.
    inline_below: float = Field(
        0.0005,
        ge=0,
        description="seconds under which a model's calls (their running mean) run on the "
        "event loop instead of a worker thread (0: always a worker)",
    )
    load_concurrency: int = Field(2, ge=1, description="loads at once, each in its own thread")
    load_timeout: float = Field(300.0, gt=0, description="seconds a load may take")
    min_model_age: float = Field(
        0.0, ge=0, description="never evict a model used within this many seconds"
    )
    failure_ttl: float = Field(
        60.0, ge=0, description="seconds a failed load is remembered (and fails fast)"
    )
    max_message_bytes: ByteSize = Field(64 * 2**20, gt=0, description="largest request or response")
    # Kubernetes' grace period should exceed the two together.
    handoff_timeout: float = Field(
        45.0, ge=0, description="seconds SIGTERM waits for this pod's models to load on others"
    )
    drain_timeout: float = Field(
        30.0, ge=0, description="seconds SIGTERM then waits for requests in flight"
    )
    per_model_metrics: bool = Field(
        False, description="label the inference totals by every model (high cardinality)"
    )
    # Chosen every metrics_top_interval seconds (mesh.pod.metrics).
    metrics_top_models: int = Field(
        10,
        ge=0,
        le=1000,
        description="per-model series for the K busiest models, the rest as model=other (0: none)",
    )
    metrics_top_interval: float = Field(
        60.0, gt=0, description="seconds between choices of the busiest models"
    )
    runtimes: Annotated[list[str] | None, Flag(items="comma")] = Field(
        None,
        description="comma-separated runtimes to enable (unset: all installed; the variable "
        'takes JSON, ["onnx","xgboost"])',
    )
    etcd: Annotated[PodEtcd, Nested(section=_MEMBERSHIP)] = PodEtcd()
    # Claimed in a transaction at start (mesh.cluster.registration).
    pod_id: Annotated[str | None, Flag(section=_MEMBERSHIP)] = Field(
        None, description="this pod's name in the mesh (unset: host name-pid)"
    )
    advertise: Annotated[str | None, Flag(section=_MEMBERSHIP)] = Field(
        None,
        description="host:port routers use to reach this pod, or a host alone to be reached on "
        "--port (unset: host name and port)",
    )
    lease_ttl: Annotated[int, Flag(section=_MEMBERSHIP)] = Field(
        10, ge=2, le=300, description="seconds a dead pod stays visible"
    )
    labels: Annotated[
        dict[str, str],
        Flag(flag="label", items="key=value", metavar="KEY=VALUE", section=_MEMBERSHIP),
    ] = Field(
        default_factory=dict,
        description="a label placement can require (repeatable; the variable takes a JSON object)",
    )
    # As ModelMesh's pvc storage: a mounted volume.
    storage_dir: Annotated[Path | None, Flag(section=_MEMBERSHIP)] = Field(
        None,
        description="local directory that LoadModel storage paths point into, for a pod "
        "without a puller",
    )
    puller: Annotated[str | None, Flag(section=_MEMBERSHIP)] = Field(
        None, description="the puller sidecar's address (host:port or unix:/path)"
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR")
    log_json: bool = Field(False, description="log JSON lines")

    @field_validator("advertise")
    @classmethod
    def _advertise_is_an_address_routers_can_use(cls, value: str | None) -> str | None:
        # Routers dial what the pod's record says (mesh.addresses): refused here, an unusable
        # address would leave the pod registered and unreachable. Empty is unset (a template's
        # optional value), as it always was.
        if value == "":
            return None
        if value is not None:
            advertised(value, 1)  # BadAddress is a ValueError: pydantic names the setting
        return value

    @field_validator("pod_id")
    @classmethod
    def _pod_id_follows_the_id_rule(cls, value: str | None) -> str | None:
        # A pod id is a segment of etcd keys (placements/{model}/{pod}): the model-id rule.
        if value is not None and not is_valid_id(value):
            raise ValueError(f"pod id {value!r} is not valid: a pod id is {RULE}")
        return value
