"""The controller's settings, from flags and MESH_CONTROLLER_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from mesh.settings import CommandSettings, MetricsSettings, Nested

_SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class ControllerSettings(CommandSettings, env_prefix="MESH_CONTROLLER_"):
    """Every knob of `mesh controller`; durations in seconds."""

    router: str = Field(
        "mesh-router:8033", description="the routers' management API (a Service in the cluster)"
    )
    router_token: str | None = Field(None, description="bearer token of the management API")
    router_ca: Path | None = Field(
        None, description="CA of the router's TLS certificate (unset: plaintext)"
    )
    namespace: str | None = Field(
        None, description="namespace of the Predictors (unset: the pod's own)"
    )
    kubeconfig: Path | None = Field(
        None, description="kubeconfig (unset: in-cluster service account, then ~/.kube/config)"
    )
    resync: float = Field(60.0, gt=0, description="seconds between full resyncs")
    poll: float = Field(2.0, gt=0, description="seconds between looks at a loading model")
    watch_timeout: int = Field(300, ge=5, description="seconds one watch stays open")
    leader_election: bool = Field(
        True,
        description="elect a leader among replicas on a coordination.k8s.io Lease "
        "(--no-leader-election: a single replica)",
    )
    lease_name: str = Field("mesh-controller", description="the Lease replicas elect a leader on")
    lease_duration: float = Field(15.0, ge=2, description="seconds a Lease holds")
    identity: str | None = Field(
        None, description="this replica's name in the Lease (unset: the host name)"
    )
    grpc_endpoint: str = Field("", description="written into each Predictor's status.grpcEndpoint")
    http_endpoint: str = Field("", description="written into each Predictor's status.httpEndpoint")
    inference_services: bool = Field(
        True,
        description="serve InferenceServices annotated serving.kserve.io/deploymentMode: "
        "ModelMesh as Predictors",
    )
    pools: bool = Field(
        True,
        description="run a Deployment of mesh pods per ServingRuntime, sized by the pool policy "
        "through the scale subresource",
    )
    pool_image: str = Field(
        "ghcr.io/mesh-serving/mesh:cpu", description="the mesh image of the pools' pods"
    )
    pool_etcd: str = Field("http://mesh-etcd:2379", description="etcd of the pools' pods")
    pool_etcd_prefix: str = Field("/mesh/", description="the pools' pods' etcd key prefix")
    pool_interval: float = Field(10.0, gt=0, description="seconds between pool resizes")
    pool_min_pods: int = Field(1, ge=0, description="a pool's fewest pods (its annotation wins)")
    pool_max_pods: int = Field(4, ge=1, description="a pool's most pods (its annotation wins)")
    pool_scale_down_after: float = Field(
        300.0, ge=0, description="seconds a pool needs fewer pods before one goes"
    )
    metrics: Annotated[MetricsSettings, Nested(prefix="")] = MetricsSettings()
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR")
    log_json: bool = Field(False, description="log JSON lines")

    def resolved_namespace(self) -> str:
        if self.namespace:
            return self.namespace
        try:
            return _SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
        except OSError:
            return "default"
