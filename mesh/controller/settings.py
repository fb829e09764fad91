"""The controller's settings, from flags and MESH_CONTROLLER_* environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

_SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class ControllerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESH_CONTROLLER_", extra="forbid")

    # The routers' management API (a Service in the cluster).
    router: str = "mesh-router:8033"
    router_token: str | None = None  # the management API's bearer token, if it requires one
    router_ca: Path | None = None  # CA of the router's TLS certificate, if it serves TLS
    # The namespace whose Predictors this controller serves (default: its own).
    namespace: str | None = None
    # A kubeconfig file; default: the in-cluster service account, then ~/.kube/config.
    kubeconfig: Path | None = None
    resync: float = Field(60.0, gt=0)
    poll: float = Field(2.0, gt=0)
    watch_timeout: int = Field(300, ge=5)
    # Leader election among replicas on a coordination.k8s.io Lease.
    leader_election: bool = True
    lease_name: str = "mesh-controller"
    lease_duration: float = Field(15.0, ge=2)
    identity: str | None = None  # default: the host name (the pod's name)
    # Written into each Predictor's status for clients to find the mesh.
    grpc_endpoint: str = ""
    http_endpoint: str = ""
    metrics_port: int | None = Field(2112, ge=0, le=65535)
    metrics_host: str = "0.0.0.0"
    log_level: str = "INFO"
    log_json: bool = False

    def resolved_namespace(self) -> str:
        if self.namespace:
            return self.namespace
        try:
            return _SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
        except OSError:
            return "default"
