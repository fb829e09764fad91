"""The pod's settings, from flags and MESH_POD_* environment variables, validated at start."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mesh.ids import RULE, is_valid_id
from mesh.units import ByteSize, parse_bytes

__all__ = ["ByteSize", "PodSettings", "parse_bytes"]


class PodSettings(BaseSettings):
    """Every knob of `mesh pod`; durations in seconds."""

    model_config = SettingsConfigDict(env_prefix="MESH_POD_", extra="forbid")

    host: str = "0.0.0.0"
    port: int = Field(8085, ge=0, le=65535)
    metrics_port: int | None = Field(2112, ge=0, le=65535)
    # A standalone pod can serve v2 REST too; in a mesh the router does.
    rest_port: int | None = Field(None, ge=0, le=65535)
    # Serve every model directory under this path by name, loading it on first request.
    models: Path | None = None
    # Bytes the cache may hold; default: the container's memory limit (or the GPU's memory)
    # less `reserve`.
    capacity: ByteSize | None = Field(None, gt=0)
    reserve: ByteSize = Field(512 * 2**20, ge=0)
    # The container's memory limit from the downward API (MESH_POD_MEMORY_LIMIT from
    # `resourceFieldRef: {resource: limits.memory}`); read before the cgroup's.
    memory_limit: ByteSize | None = Field(None, gt=0)
    # Bytes of host memory for models evicted from the device tier (0: none): they are demoted
    # there and come back on their next request without the disk or the puller. On a CPU-only
    # pod the default capacity leaves this much of the memory to the host tier.
    host_tier: ByteSize = Field(0, ge=0)
    # Device bytes a runtime may fail to give back over its unloads before the pod recycles
    # (drains and exits to be replaced); and how long an unload's memory may take to come back.
    unload_leak_bound: ByteSize = Field(256 * 2**20, ge=0)
    unload_settle: float = Field(2.0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    device_index: int = Field(0, ge=0)
    # Threads running inference; requests beyond them queue.
    workers: int = Field(4, ge=1)
    # Loads running at once, each in its own thread.
    load_concurrency: int = Field(2, ge=1)
    load_timeout: float = Field(300.0, gt=0)
    # A model used more recently than this is never evicted (churn guard).
    min_model_age: float = Field(0.0, ge=0)
    # How long a failed load is remembered (and requests for it fail fast).
    failure_ttl: float = Field(60.0, ge=0)
    max_message_bytes: ByteSize = Field(64 * 2**20, gt=0)
    # Seconds SIGTERM waits, in a mesh, for the pod's models to be loaded on other pods.
    handoff_timeout: float = Field(45.0, ge=0)
    # Seconds SIGTERM then waits for requests in flight. Kubernetes' grace period should
    # exceed the two together.
    drain_timeout: float = Field(30.0, ge=0)
    # Label the inference totals by model (cardinality grows with the number of models).
    per_model_metrics: bool = False
    # The per-model series label only this many busiest models (the rest: "other"; 0: none),
    # chosen every metrics_top_interval seconds (mesh.pod.metrics).
    metrics_top_models: int = Field(10, ge=0, le=1000)
    metrics_top_interval: float = Field(60.0, gt=0)
    runtimes: list[str] | None = None
    # Cluster membership: etcd endpoints ("http://a:2379,http://b:2379"); none: standalone.
    etcd: str | None = None
    etcd_prefix: str = "/mesh/"
    etcd_ca: Path | None = None
    etcd_cert: Path | None = None
    etcd_key: Path | None = None
    # This pod's name in the cluster (default: the host name and the process id, unique per
    # process), claimed in a transaction at start (mesh.cluster.registration), and the address
    # routers use (default: host name and port).
    pod_id: str | None = None
    advertise: str | None = None
    lease_ttl: int = Field(10, ge=2, le=300)
    labels: dict[str, str] = Field(default_factory=dict)
    # Where LoadModel's storage paths point when the pod has no puller: a local directory
    # (a mounted volume), as ModelMesh's pvc storage.
    storage_dir: Path | None = None
    # The puller sidecar's address (host:port or unix:/path).
    puller: str | None = None
    log_level: str = "INFO"
    log_json: bool = False

    @field_validator("pod_id")
    @classmethod
    def _pod_id_follows_the_id_rule(cls, value: str | None) -> str | None:
        # A pod id is a segment of etcd keys (placements/{model}/{pod}): the model-id rule.
        if value is not None and not is_valid_id(value):
            raise ValueError(f"pod id {value!r} is not valid: a pod id is {RULE}")
        return value
