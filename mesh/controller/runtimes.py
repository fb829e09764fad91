"""ServingRuntimes as pools of mesh pods: parsing, choosing a model's runtime, the Deployment.

Pure functions, no I/O. modelmesh-serving's `ServingRuntime` (namespaced) and
`ClusterServingRuntime` (cluster-wide), `serving.kserve.io/v1alpha1`, each become one pool: a
Deployment of mesh pods (`mesh-pod-<runtime>`), owned by the runtime, whose pods load only the
mesh runtimes that serve the runtime's `supportedModelFormats` (`--runtimes`) and carry the
label `pool=<runtime>` (`--label`). Both are in each pod's instance record, and placement
already requires them: a model goes only to a pod that runs its format's runtime
(`ModelRequirements.runtime`) and carries its required labels. The controller registers a
model with the required label `pool=<the runtime chosen for it>`, so it is placed only on that
pool, and a request held for it (scale from zero) is demand for that pool.

Choosing a model's runtime follows KServe: a runtime named by the model (`spec.runtime`) must
exist, be enabled, be multi-model and list the model's format; otherwise the runtimes that list
the format with `autoSelect: true` (and its version, when the model names one) compete, the
highest `priority` first, a namespaced runtime before a cluster one of the same priority, then
by name. A runtime with `multiModel: false` is not a ModelMesh runtime and is ignored here.

The pool's size comes from the pool policy (mesh.placement.pool), bounded per runtime by the
annotations `mesh.serving.kserve.io/min-pods`, `max-pods` and `scale-down-after` (seconds); a
runtime that sets `spec.replicas` and no bounds is a fixed pool of that size.

>>> sr = parse_runtime({"metadata": {"name": "mlserver", "namespace": "ml", "uid": "u"},
...                     "spec": {"multiModel": True, "supportedModelFormats": [
...                         {"name": "xgboost", "autoSelect": True}]}})
>>> sr.runtimes, choose_runtime([sr], "xgboost", "", "").name
(('xgboost',), 'mlserver')
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mesh.controller.predictor import FORMATS, InvalidSpec

GROUP, VERSION = "serving.kserve.io", "v1alpha1"
SERVING_RUNTIMES, CLUSTER_SERVING_RUNTIMES = "servingruntimes", "clusterservingruntimes"
POOL_LABEL = "pool"  # the pod label (and a model's required label) naming its pool
MIN_PODS = "mesh.serving.kserve.io/min-pods"
MAX_PODS = "mesh.serving.kserve.io/max-pods"
SCALE_DOWN_AFTER = "mesh.serving.kserve.io/scale-down-after"
# The pod label naming the runtime, as modelmesh-serving labels its runtime pods.
RUNTIME_LABEL = "modelmesh-service-runtime"
MANAGED_BY = "mesh-controller"


@dataclass(frozen=True, slots=True)
class ModelFormat:
    name: str
    version: str = ""
    auto_select: bool = False
    priority: int = 0


@dataclass(frozen=True, slots=True)
class PoolBounds:
    min_pods: int
    max_pods: int
    scale_down_after: float | None = None  # None: the controller's default


@dataclass(frozen=True, slots=True)
class RuntimeSpec:
    """One ServingRuntime or ClusterServingRuntime, as a pool of mesh pods."""

    name: str
    cluster: bool
    uid: str
    formats: tuple[ModelFormat, ...]
    multi_model: bool = True
    disabled: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    # The first container's resources and env: what the mesh pod container gets.
    resources: Mapping[str, Any] = field(default_factory=dict)
    env: tuple[Mapping[str, Any], ...] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    replicas: int | None = None

    @property
    def kind(self) -> str:
        return "ClusterServingRuntime" if self.cluster else "ServingRuntime"

    @property
    def runtimes(self) -> tuple[str, ...]:
        """The mesh runtimes the pool's pods load (`--runtimes`), in the formats' order."""
        out: list[str] = []
        for f in self.formats:
            runtime = FORMATS.get(f.name.lower())
            if runtime is not None and runtime not in out:
                out.append(runtime)
        return tuple(out)

    @property
    def unserved(self) -> tuple[str, ...]:
        """Formats the runtime lists that no mesh runtime loads (reported, never placed)."""
        return tuple(f.name for f in self.formats if f.name.lower() not in FORMATS)

    @property
    def gpu(self) -> bool:
        """Whether the runtime's container asks for GPUs (`nvidia.com/gpu` and the like, in
        its limits or requests): its pool's pods are then GPU pods (`gpu=true`)."""
        for part in ("limits", "requests"):
            amounts = self.resources.get(part)
            if isinstance(amounts, Mapping) and any(
                str(k).endswith("/gpu") and str(v) not in ("", "0") for k, v in amounts.items()
            ):
                return True
        return False

    @property
    def serves(self) -> bool:
        """Whether the mesh runs a pool for it: enabled, multi-model, some format loadable."""
        return self.multi_model and not self.disabled and bool(self.runtimes)

    def supports(self, format_name: str, version: str = "", *, auto: bool = False) -> int | None:
        """The priority with which it serves the format (None: it does not). `auto`: only
        formats it lists with autoSelect."""
        name = format_name.lower()
        best: int | None = None
        for f in self.formats:
            if f.name.lower() != name or (auto and not f.auto_select):
                continue
            if version and f.version and f.version != version:
                continue
            best = f.priority if best is None else max(best, f.priority)
        return best

    def bounds(self, default_min: int, default_max: int) -> PoolBounds:
        """The pool's bounds from the annotations (InvalidSpec for ones that do not parse)."""
        lo, hi = default_min, default_max
        if self.replicas is not None and MIN_PODS not in self.annotations:
            lo = hi = self.replicas
        lo = _int(self.annotations.get(MIN_PODS), lo, MIN_PODS)
        hi = _int(self.annotations.get(MAX_PODS), max(hi, lo), MAX_PODS)
        after = self.annotations.get(SCALE_DOWN_AFTER)
        scale_down_after: float | None = None
        if after is not None:
            try:
                scale_down_after = float(after)
            except ValueError:
                raise InvalidSpec(
                    f"annotation {SCALE_DOWN_AFTER}: {after!r} is not seconds"
                ) from None
            if scale_down_after < 0:
                raise InvalidSpec(f"annotation {SCALE_DOWN_AFTER} must not be negative")
        if not 0 <= lo <= hi:
            raise InvalidSpec(f"pool bounds: need 0 <= min-pods ({lo}) <= max-pods ({hi})")
        return PoolBounds(lo, hi, scale_down_after)


def _int(value: str | None, default: int, what: str) -> int:
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise InvalidSpec(f"annotation {what}: {value!r} is not a whole number") from None


def parse_runtime(obj: Mapping[str, Any], cluster: bool = False) -> RuntimeSpec:
    """The runtime as a pool; InvalidSpec names what is wrong."""
    metadata = obj.get("metadata") or {}
    name = str(metadata.get("name") or "")
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        raise InvalidSpec(f"runtime {name}: spec is missing")
    raw_formats = spec.get("supportedModelFormats") or []
    if not isinstance(raw_formats, list):
        raise InvalidSpec(f"runtime {name}: spec.supportedModelFormats must be a list")
    formats = []
    for f in raw_formats:
        if not isinstance(f, Mapping) or not f.get("name"):
            raise InvalidSpec(f"runtime {name}: every supportedModelFormats entry needs a name")
        try:
            priority = int(f.get("priority") or 0)
        except (TypeError, ValueError):
            raise InvalidSpec(f"runtime {name}: priority must be an integer") from None
        formats.append(
            ModelFormat(
                str(f["name"]), str(f.get("version") or ""), bool(f.get("autoSelect")), priority
            )
        )
    containers = spec.get("containers") or []
    if not isinstance(containers, list):
        raise InvalidSpec(f"runtime {name}: spec.containers must be a list")
    first: Mapping[str, Any] = (
        containers[0] if containers and isinstance(containers[0], Mapping) else {}
    )
    # The CRD keeps a container's fields (and the older ones) as written: check what is used.
    resources = _shaped(first.get("resources"), Mapping, name, "containers[0].resources")
    env = _shaped(first.get("env"), list, name, "containers[0].env")
    node_selector = _shaped(spec.get("nodeSelector"), Mapping, name, "spec.nodeSelector")
    tolerations = _shaped(spec.get("tolerations"), list, name, "spec.tolerations")
    labels = _shaped(spec.get("labels"), Mapping, name, "spec.labels")
    replicas = spec.get("replicas")
    return RuntimeSpec(
        name=name,
        cluster=cluster,
        uid=str(metadata.get("uid") or ""),
        formats=tuple(formats),
        multi_model=bool(spec.get("multiModel", False)),
        disabled=bool(spec.get("disabled", False)),
        labels=dict(metadata.get("labels") or {}) | dict(labels),
        annotations=dict(metadata.get("annotations") or {}),
        resources=dict(resources),
        env=tuple(e for e in env if isinstance(e, Mapping)),
        node_selector=dict(node_selector),
        tolerations=tuple(t for t in tolerations if isinstance(t, Mapping)),
        replicas=int(replicas) if isinstance(replicas, int) else None,
    )


def _shaped(value: Any, kind: type, runtime: str, what: str) -> Any:
    """`value` (empty when unset) if it is a `kind`; InvalidSpec naming it otherwise."""
    if value is None:
        return kind() if kind is list else {}
    if not isinstance(value, kind):
        shape = "a list" if kind is list else "an object"
        raise InvalidSpec(f"runtime {runtime}: {what} must be {shape}, not {value!r}")
    return value


def effective(
    namespaced: Iterable[RuntimeSpec], cluster: Iterable[RuntimeSpec]
) -> list[RuntimeSpec]:
    """The runtimes a namespace sees: its own, and the cluster's it has none of the same name."""
    own = list(namespaced)
    names = {r.name for r in own}
    return own + [r for r in cluster if r.name not in names]


def choose_runtime(
    runtimes: Sequence[RuntimeSpec], format_name: str, version: str, named: str
) -> RuntimeSpec:
    """The runtime that serves a model of this format (see the module's rules); InvalidSpec
    with KServe's reasons (`RuntimeNotRecognized`, `RuntimeDisabled`, `NoSupportingRuntime`)."""
    if named:
        runtime = next((r for r in runtimes if r.name == named), None)
        if runtime is None:
            raise InvalidSpec(
                f"runtime {named!r} is not a ServingRuntime or ClusterServingRuntime here",
                reason="RuntimeNotRecognized",
            )
        if runtime.disabled:
            raise InvalidSpec(f"runtime {named!r} is disabled", reason="RuntimeDisabled")
        if not runtime.multi_model:
            raise InvalidSpec(
                f"runtime {named!r} is not multi-model (multiModel: false): not a ModelMesh "
                "runtime",
                reason="RuntimeNotRecognized",
            )
        if runtime.supports(format_name, version) is None or FORMATS.get(format_name) is None:
            raise InvalidSpec(
                f"runtime {named!r} does not serve model format {_fmt(format_name, version)} "
                f"(it serves: {', '.join(f.name for f in runtime.formats) or 'nothing'})",
                reason="NoSupportingRuntime",
            )
        return runtime
    candidates = []
    for r in runtimes:
        if not r.serves:
            continue
        priority = r.supports(format_name, version, auto=True)
        if priority is not None:
            candidates.append((-priority, r.cluster, r.name, r))
    if not candidates or FORMATS.get(format_name) is None:
        listed = sorted({f.name for r in runtimes if r.serves for f in r.formats if f.auto_select})
        raise InvalidSpec(
            f"no ServingRuntime serves model format {_fmt(format_name, version)} "
            f"(auto-selected formats here: {', '.join(listed) or 'none'})",
            reason="NoSupportingRuntime",
        )
    return min(candidates, key=lambda c: c[:3])[3]


def _fmt(name: str, version: str) -> str:
    return f"{name!r}" + (f" version {version!r}" if version else "")


# -- the runtime's status ---------------------------------------------------------------------

# The Ready condition's reasons (docs/kubernetes.md).
PODS_READY, PODS_STARTING, SCALED_TO_ZERO = "PodsReady", "PodsStarting", "ScaledToZero"
DISABLED, NO_SUPPORTED_FORMAT, INVALID_RUNTIME = "Disabled", "NoSupportedFormat", "InvalidRuntime"


def runtime_status(
    runtime: RuntimeSpec | None,
    desired: int,
    ready: int,
    previous: Mapping[str, Any],
    now: str,
    generation: int = 0,
    problem: str = "",
) -> dict[str, Any]:
    """A ServingRuntime's status: its pool's Deployment, the pods the controller wants
    (`replicas`) and the ready ones (`readyReplicas`, as the Deployment counts them), the
    runtime's generation they answer to, and one `Ready` condition whose reason says what the
    pool waits for. `runtime` None, or `problem` set: the runtime does not parse (its status
    says why). `previous` is the status the runtime has: the condition keeps its
    lastTransitionTime while its status stays."""
    if problem or runtime is None:
        value, reason, message = "False", INVALID_RUNTIME, problem
    elif runtime.disabled:
        value, reason, message = "False", DISABLED, "spec.disabled is true: the pool has no pods"
    elif not runtime.runtimes:
        listed = ", ".join(f.name for f in runtime.formats) or "none"
        value, reason = "False", NO_SUPPORTED_FORMAT
        message = (
            f"no format it lists ({listed}) is one the mesh loads "
            f"({', '.join(sorted(FORMATS))}): the pool has no pods"
        )
    elif desired == 0:
        value, reason = "True", SCALED_TO_ZERO
        message = "no pods: a request for one of its models brings one up"
    else:
        value = "True" if ready >= desired else "False"
        reason = PODS_READY if ready >= desired else PODS_STARTING
        message = f"{ready} of {desired} pods ready"
    old = next(
        (c for c in previous.get("conditions") or [] if isinstance(c, Mapping)
         and c.get("type") == "Ready"),
        {},
    )  # fmt: skip
    since = old.get("lastTransitionTime") if old.get("status") == value else None
    out: dict[str, Any] = {
        "replicas": desired,
        "readyReplicas": ready,
        "conditions": [
            {"type": "Ready", "status": value, "reason": reason, "message": message,
             "lastTransitionTime": since or now},
        ],
    }  # fmt: skip
    if runtime is not None:
        out["deploymentName"] = deployment_name(runtime)
    if generation:
        out["observedGeneration"] = generation
    return out


# -- the Deployment ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PodTemplate:
    """What every pool's pods share (the controller's settings)."""

    image: str = "ghcr.io/mesh-serving/mesh:cpu"
    etcd: str = "http://mesh-etcd:2379"
    etcd_prefix: str = "/mesh/"
    service_account: str = "mesh"
    storage_secret: str = "storage-config"


def deployment_name(runtime: RuntimeSpec) -> str:
    return f"mesh-pod-{runtime.name}"


def selector_labels(runtime: RuntimeSpec) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "mesh",
        "app.kubernetes.io/component": "pod",
        RUNTIME_LABEL: runtime.name,
    }


def owner_reference(runtime: RuntimeSpec) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": runtime.kind,
        "name": runtime.name,
        "uid": runtime.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def pod_args(runtime: RuntimeSpec, template: PodTemplate) -> list[str]:
    """The `mesh pod` arguments of a pool's pods: its runtimes and its pool label."""
    return [
        "pod",
        f"--etcd={template.etcd}",
        f"--etcd-prefix={template.etcd_prefix}",
        "--puller=127.0.0.1:8086",
        "--port=8085",
        "--metrics-port=2112",
        "--handoff-timeout=45",
        "--drain-timeout=30",
        f"--runtimes={','.join(runtime.runtimes)}",
        f"--label={POOL_LABEL}={runtime.name}",
        # As the GPU overlay labels its pods: `gpu: required` models are placed only there.
        *(["--label=gpu=true"] if runtime.gpu else []),
        "--log-json",
    ]


def deployment(
    runtime: RuntimeSpec, namespace: str, template: PodTemplate, replicas: int
) -> dict[str, Any]:
    """The pool's Deployment: the base `mesh-pod` pods (deploy/base/pod.yaml) with the runtime's
    formats, labels, resources, env, node selector and tolerations, owned by the runtime."""
    select = selector_labels(runtime)
    labels = {**dict(runtime.labels), **select, "app.kubernetes.io/managed-by": MANAGED_BY}
    resources = dict(runtime.resources) or {
        "requests": {"cpu": "1", "memory": "4Gi"},
        "limits": {"cpu": "4", "memory": "4Gi"},
    }
    hardened = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    probe_puller = {
        "exec": {
            "command": [
                "python", "-c",
                'import socket; socket.create_connection(("127.0.0.1", 8086), 3).close()',
            ]
        },
        "periodSeconds": 10,
        "timeoutSeconds": 5,
    }  # fmt: skip
    grpc_probe = {"grpc": {"port": 8085}}
    env = [
        {"name": "MESH_POD_POD_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "MESH_POD_ADVERTISE", "value": "$(POD_IP):8085"},
        {
            "name": "MESH_POD_MEMORY_LIMIT",
            "valueFrom": {
                "resourceFieldRef": {"containerName": "pod", "resource": "limits.memory"}
            },
        },
        {"name": "XDG_CACHE_HOME", "value": "/tmp/cache"},
        *[dict(e) for e in runtime.env],
    ]
    pod_spec: dict[str, Any] = {
        "serviceAccountName": template.service_account,
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 90,
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "pod",
                "image": template.image,
                "args": pod_args(runtime, template),
                "env": env,
                "ports": [
                    {"name": "grpc", "containerPort": 8085},
                    {"name": "metrics", "containerPort": 2112},
                ],
                "startupProbe": {**grpc_probe, "periodSeconds": 5, "failureThreshold": 60},
                "readinessProbe": {**grpc_probe, "periodSeconds": 5, "failureThreshold": 2},
                "livenessProbe": {
                    "grpc": {"port": 8085}, "periodSeconds": 10, "timeoutSeconds": 5,
                    "failureThreshold": 6,
                },
                "resources": resources,
                "securityContext": hardened,
                "volumeMounts": [
                    {"name": "models", "mountPath": "/models", "readOnly": True},
                    {"name": "tmp", "mountPath": "/tmp"},
                ],
            },
            {
                "name": "puller",
                "image": template.image,
                "args": [
                    "puller", "--listen=127.0.0.1:8086", "--cache-dir=/models/cache",
                    "--cache-bytes=10Gi", "--storage-config=/storage-config",
                    "--metrics-port=2113", "--log-json",
                ],
                "ports": [{"name": "puller-metrics", "containerPort": 2113}],
                "startupProbe": {**probe_puller, "periodSeconds": 5, "failureThreshold": 60},
                "readinessProbe": probe_puller,
                "resources": {
                    "requests": {"cpu": "250m", "memory": "256Mi", "ephemeral-storage": "10Gi"},
                    "limits": {"cpu": "2", "memory": "1Gi"},
                },
                "securityContext": hardened,
                "volumeMounts": [
                    {"name": "models", "mountPath": "/models"},
                    {"name": "storage-config", "mountPath": "/storage-config", "readOnly": True},
                    {"name": "tmp", "mountPath": "/tmp"},
                ],
            },
        ],
        "volumes": [
            {"name": "models", "emptyDir": {"sizeLimit": "12Gi"}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
            {"name": "storage-config", "secret": {"secretName": template.storage_secret}},
        ],
    }  # fmt: skip
    if runtime.node_selector:
        pod_spec["nodeSelector"] = dict(runtime.node_selector)
    if runtime.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in runtime.tolerations]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(runtime),
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(runtime)],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": select},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
