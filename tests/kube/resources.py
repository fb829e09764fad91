"""The resources the fake API server serves (group, version, plural, kind, scope, subresources)
and the per-resource rules of their schemas: MicroTime fields, what counts as the spec.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tests.kube.errors import KubeError

Obj = dict[str, Any]


@dataclass(frozen=True)
class Resource:
    """One served resource. ``builtin`` marks a compiled-in type rather than a custom resource:
    kind/apiVersion may be left out of a body, strategic merge is accepted, a replace needs no
    resourceVersion, a replace of a missing object creates it, and no ``generation`` is kept."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    has_status: bool = False
    builtin: bool = False
    # Dotted paths of metav1.MicroTime fields, normalised to "2006-01-02T15:04:05.000000Z".
    micro_time_fields: tuple[str, ...] = ()
    # The scale subresource (autoscaling/v1 Scale over spec.replicas, status.replicas and
    # spec.selector.matchLabels), as Deployments have it.
    scalable: bool = False
    # A built-in type that keeps metadata.generation all the same (Deployments do).
    keeps_generation: bool = False
    # The status fields a custom resource's structural schema declares; others are pruned from
    # what is written, as the API server does (None: all kept). KServe's own ServingRuntime CRD
    # declares an empty status object.
    status_fields: frozenset[str] | None = None

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def group_resource(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def tracks_generation(self) -> bool:
        return not self.builtin or self.keeps_generation

    def serves(self, subresource: str) -> bool:
        return (subresource == "status" and self.has_status) or (
            subresource == "scale" and self.scalable
        )


PREDICTORS = Resource("serving.kserve.io", "v1alpha1", "predictors", "Predictor", has_status=True)
LEASES = Resource(
    "coordination.k8s.io",
    "v1",
    "leases",
    "Lease",
    builtin=True,
    micro_time_fields=("spec.acquireTime", "spec.renewTime"),
)
# core/v1 Events, as a controller records them (kubectl describe shows them).
EVENTS = Resource("", "v1", "events", "Event", builtin=True)
# modelmesh-serving's runtimes (namespaced and cluster-wide) and KServe's InferenceService.
# Both CRDs (deploy/crd/) declare the status subresource.
SERVING_RUNTIMES = Resource(
    "serving.kserve.io", "v1alpha1", "servingruntimes", "ServingRuntime", has_status=True
)
CLUSTER_SERVING_RUNTIMES = Resource(
    "serving.kserve.io",
    "v1alpha1",
    "clusterservingruntimes",
    "ClusterServingRuntime",
    namespaced=False,
    has_status=True,
)
INFERENCE_SERVICES = Resource(
    "serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService", has_status=True
)
DEPLOYMENTS = Resource(
    "apps",
    "v1",
    "deployments",
    "Deployment",
    has_status=True,
    builtin=True,
    scalable=True,
    keeps_generation=True,
)
PODS = Resource("", "v1", "pods", "Pod", has_status=True, builtin=True)
DEFAULT_RESOURCES: tuple[Resource, ...] = (PREDICTORS, LEASES, EVENTS)
# What a test of pools (ServingRuntimes to Deployments to pods) serves.
POOL_RESOURCES: tuple[Resource, ...] = (
    *DEFAULT_RESOURCES,
    SERVING_RUNTIMES,
    CLUSTER_SERVING_RUNTIMES,
    INFERENCE_SERVICES,
    DEPLOYMENTS,
    PODS,
)


def now() -> datetime:
    return datetime.now(UTC)


def rfc3339(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


_FRACTION = re.compile(r"(\.\d{1,6})\d*")


def _micro_time(value: Any, path: str) -> Any:
    if value is None:
        return None
    if not isinstance(value, str):
        raise KubeError(400, f"{path}: expected an RFC 3339 time string, got {value!r}")
    try:
        parsed = datetime.fromisoformat(_FRACTION.sub(r"\1", value, count=1))
    except ValueError as exc:
        raise KubeError(400, f"{path}: {value!r} is not an RFC 3339 time") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def normalise_times(res: Resource, obj: Obj) -> None:
    for dotted in res.micro_time_fields:
        *parents, leaf = dotted.split(".")
        node: Any = obj
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            node[leaf] = _micro_time(node[leaf], dotted)


def spec_of(obj: Obj, res: Resource) -> Obj:
    skip = {"metadata", "status"} if res.has_status else {"metadata"}
    return {k: v for k, v in obj.items() if k not in skip}
