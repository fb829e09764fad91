"""The deployment under deploy/, the Dockerfile and the Grafana dashboard, checked offline.

No Kubernetes API server runs on the development machines (no container runtime, no
kube-apiserver binary), so the manifests are checked here instead:

- every Kubernetes object validates with kubernetes-validate (the API's own OpenAPI schemas,
  strict: unknown fields fail) for the pinned versions below; the Predictor CRD is one of them;
- every sample Predictor validates against the CRD's openAPIV3Schema, and broken ones do not;
- kustomizations: every file they list exists, every patch targets a resource of their bases,
  and the overlays render (with `kubectl kustomize`; `make test` installs kubectl) into objects
  that validate;
- Service, PodDisruptionBudget, ServiceMonitor and workload selectors match pod labels, and
  named ports exist;
- every container has resource requests and limits and probes;
- the arguments and MESH_* variables given to `mesh pod`, `mesh router` and `mesh puller` go
  through the real parsers and settings (nothing is started);
- every metric the Grafana dashboard and the prometheus-adapter rules query is one that mesh/
  exports, under the name Prometheus sees;
- the Dockerfile's targets install extras that pyproject.toml defines.
"""

from __future__ import annotations

import argparse
import ast
import copy
import functools
import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml
from kubernetes_validate.utils import all_versions

from mesh import cli
from mesh.pod.membership import advertised_address

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CRD_FILE = DEPLOY / "crd" / "serving.kserve.io_predictors.yaml"
DASHBOARD = DEPLOY / "grafana" / "mesh-capacity.json"
ADAPTER_VALUES = DEPLOY / "examples" / "prometheus-adapter-values.yaml"

# The oldest Kubernetes the manifests target (native gRPC probes, policy/v1, autoscaling/v2 and
# the kubernetes.io/h2c appProtocol are all older) and the newest kubernetes-validate 1.37 ships.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
MESH_IMAGE = "ghcr.io/mesh-serving/mesh"
# YAML under deploy/ that is not a Kubernetes object.
NOT_MANIFESTS = {ADAPTER_VALUES: "Helm values for the prometheus-adapter chart"}
# Kinds kubernetes-validate has no schema for: the Predictor is checked against our CRD, the
# ServiceMonitor (Prometheus Operator) by test_service_monitors_select_services, the
# ServingRuntime and InferenceService samples by test_kserve_samples_validate.
NO_SCHEMA = {"Predictor", "ServiceMonitor", "ServingRuntime", "InferenceService"}
WORKLOADS = {"Deployment", "StatefulSet"}
# What the kubelet would give the downward API, for expanding $(VAR) in env and args.
FIELD_VALUES = {
    "metadata.name": "mesh-pod-5d8c9b7f4-x2k9q",
    "metadata.namespace": "mesh",
    "status.podIP": "10.1.2.3",
}
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20}
_UNITS |= {"Gi": 2**30, "Ti": 2**40}


# -- loading ---------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _schemas_read_once() -> Iterator[None]:
    """kubernetes-validate reads its 2 MB of definitions again for every object: once will do."""
    with pytest.MonkeyPatch.context() as mp:
        read = functools.cache(kubernetes_validate.utils.schema_contents)
        mp.setattr(kubernetes_validate.utils, "schema_contents", read)
        yield


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_docs(path: Path) -> list[Any]:
    with path.open() as f:
        return [doc for doc in yaml.load_all(f, Loader=_Loader) if doc is not None]


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def kustomization_files() -> list[Path]:
    return [p for p in yaml_files() if p.name in ("kustomization.yaml", "kustomization.yml")]


def patch_entries(kustomization: Path) -> list[dict[str, Any]]:
    k = load_docs(kustomization)[0]
    entries = [p if isinstance(p, dict) else {"path": p} for p in k.get("patches", [])]
    entries += [{"path": p} for p in k.get("patchesStrategicMerge", [])]
    return entries


def patch_files() -> set[Path]:
    return {
        (k.parent / entry["path"]).resolve()
        for k in kustomization_files()
        for entry in patch_entries(k)
        if "path" in entry
    }


def manifest_files() -> list[Path]:
    skip = set(kustomization_files()) | patch_files() | set(NOT_MANIFESTS)
    return [p for p in yaml_files() if p.resolve() not in skip and p not in skip]


def manifests() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in manifest_files() for doc in load_docs(path)]


def kustomize_docs(directory: Path) -> list[dict[str, Any]]:
    """The objects a kustomization's resources hold, bases included (no transformations)."""
    k = load_docs(directory / "kustomization.yaml")[0]
    docs: list[dict[str, Any]] = []
    for entry in k.get("resources", []):
        target = (directory / entry).resolve()
        docs += kustomize_docs(target) if target.is_dir() else load_docs(target)
    return docs


BASE = kustomize_docs(DEPLOY / "base")


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name}")


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            yield doc, doc["spec"]["template"]["spec"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def mesh_containers(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The containers running `mesh <command>`, by command."""
    found = {}
    for _, spec in pod_specs(docs):
        for c in containers(spec):
            if c["image"].split(":")[0] == MESH_IMAGE:
                found[c["args"][0]] = c
    return found


def quantity(value: str | int) -> float:
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match, value
    number, unit = match.groups()
    return float(number) / 1000 if unit == "m" else float(number) * _UNITS[unit]


# -- every object ----------------------------------------------------------------------------


def test_every_yaml_file_is_understood() -> None:
    files = manifest_files()
    assert {p.name for p in files} >= {"serving.kserve.io_predictors.yaml", "pod.yaml"}
    for path, doc in manifests():
        assert isinstance(doc, dict), path
        assert doc.get("apiVersion") and doc.get("kind"), f"{path}: not a Kubernetes object"
        assert doc.get("metadata", {}).get("name"), f"{path}: {doc['kind']} without a name"
    for path in NOT_MANIFESTS:
        assert path.exists(), path


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_objects_validate(version: str) -> None:
    # A kubernetes-validate without this version's schemas is the wrong install: fail, so the
    # newer schema is never silently dropped (pyproject pins a release that ships it).
    assert version in all_versions(), f"kubernetes-validate ships no schemas for {version}"
    checked = 0
    for path, doc in manifests():
        if doc["kind"] in NO_SCHEMA:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{path.relative_to(ROOT)}: {doc['kind']} {where}: {exc.message}")
        checked += 1
    assert checked >= 15


def test_quantities_are_kubernetes_quantities() -> None:
    # kubernetes-validate takes any string where a quantity goes; the API server would not.
    for path, doc in manifests():
        for _, spec in pod_specs([doc]):
            for c in containers(spec):
                for section in ("requests", "limits"):
                    for resource, value in c.get("resources", {}).get(section, {}).items():
                        assert _QUANTITY.match(str(value)), f"{path}: {c['name']} {resource}"


# -- the Predictor CRD -----------------------------------------------------------------------


def crd() -> dict[str, Any]:
    (doc,) = load_docs(CRD_FILE)
    return doc


def predictor_schema() -> dict[str, Any]:
    (version,) = crd()["spec"]["versions"]
    return strict(version["schema"]["openAPIV3Schema"])


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema as the API server applies it to `kubectl apply` (field validation Strict):
    an object's unknown fields are errors, except under metadata (validated by the server
    itself) and where the schema says otherwise. jsonschema ignores the x-kubernetes-* keys."""
    schema = copy.deepcopy(schema)

    def walk(node: dict[str, Any], under_metadata: bool = False) -> None:
        open_ = under_metadata or node.get("x-kubernetes-preserve-unknown-fields", False)
        if node.get("type") == "object" and "properties" in node and not open_:
            node.setdefault("additionalProperties", False)
        for name, child in node.get("properties", {}).items():
            walk(child, name == "metadata")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"])
        if isinstance(node.get("items"), dict):
            walk(node["items"])

    walk(schema)
    return schema


def schema_nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from schema_nodes(child, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        yield from schema_nodes(node["additionalProperties"], f"{path}.*")
    if isinstance(node.get("items"), dict):
        yield from schema_nodes(node["items"], f"{path}[]")


def test_crd_names_and_version() -> None:
    doc = crd()
    assert doc["metadata"]["name"] == "predictors.serving.kserve.io"
    spec = doc["spec"]
    assert spec["group"] == "serving.kserve.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "Predictor"
    assert spec["names"]["plural"] == "predictors"
    assert spec["names"]["singular"] == "predictor"
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: (c["type"], c["jsonPath"]) for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Type": ("string", ".spec.modelType.name"),
        "Available": ("boolean", ".status.available"),
        "ActiveModel": ("string", ".status.activeModelState"),
        "TargetModel": ("string", ".status.targetModelState"),
        "Transition": ("string", ".status.transitionStatus"),
        "Age": ("date", ".metadata.creationTimestamp"),
    }


def test_crd_schema_is_structural() -> None:
    """What the API server requires of a v1 CRD's schema (and kubernetes-validate does not
    check): a type on every node, defaults that their own schema accepts, printer columns that
    name fields of the schema."""
    (version,) = crd()["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]
    for path, node in schema_nodes(schema):
        assert "type" in node, f"openAPIV3Schema{path} has no type"
        if "default" in node:
            jsonschema.validate(node["default"], node)
    nodes = dict(schema_nodes(schema))
    for column in version["additionalPrinterColumns"]:
        if column["jsonPath"].startswith(".metadata."):
            continue
        assert column["jsonPath"] in nodes, column


def test_crd_fields_as_modelmesh_serving() -> None:
    props = predictor_schema()["properties"]
    spec, status = props["spec"], props["status"]
    assert spec["required"] == ["modelType"]
    assert spec["properties"]["modelType"]["required"] == ["name"]
    assert set(spec["properties"]) >= {
        "modelType", "path", "schemaPath", "storage", "runtime", "gpu", "protocolVersion",
        "serviceAccountName",
    }  # fmt: skip
    storage = spec["properties"]["storage"]["properties"]
    assert set(storage) >= {"key", "path", "schemaPath", "parameters", "s3"}
    assert storage["parameters"]["additionalProperties"] == {"type": "string"}
    assert set(storage["s3"]["properties"]) == {"secretKey", "bucket"}
    assert spec["properties"]["gpu"]["enum"] == ["required", "preferred"]
    states = ["Pending", "Standby", "Loading", "Loaded", "FailedToLoad"]
    assert status["properties"]["activeModelState"]["enum"] == ["", *states]
    assert status["properties"]["targetModelState"]["enum"] == ["", *states]
    assert status["properties"]["transitionStatus"]["enum"] == [
        "UpToDate", "InProgress", "BlockedByFailedLoad", "InvalidSpec",
    ]  # fmt: skip
    failure = status["properties"]["lastFailureInfo"]["properties"]
    assert failure["reason"]["enum"] == [
        "ModelLoadFailed", "RuntimeUnhealthy", "NoSupportingRuntime", "RuntimeNotRecognized",
        "InvalidPredictorSpec",
    ]  # fmt: skip
    assert failure["time"] == {"type": "string", "format": "date-time"}
    for name in ("totalCopies", "failedCopies"):
        assert status["properties"][name]["type"] == "integer"
    for name in ("grpcEndpoint", "httpEndpoint"):
        assert status["properties"][name]["type"] == "string"


def sample_files() -> list[Path]:
    return sorted((DEPLOY / "samples").glob("*.yaml"))


@pytest.mark.parametrize("path", sample_files(), ids=lambda p: p.name)
def test_sample_predictors_validate(path: Path) -> None:
    schema = predictor_schema()
    for doc in load_docs(path):
        assert doc["apiVersion"] == "serving.kserve.io/v1alpha1"
        assert doc["kind"] == "Predictor"
        jsonschema.validate(doc, schema, format_checker=jsonschema.FormatChecker())


def test_samples_cover_both_storage_forms_and_gpu() -> None:
    specs = [doc["spec"] for path in sample_files() for doc in load_docs(path)]
    assert any("key" in s.get("storage", {}) and "path" in s["storage"] for s in specs)
    assert any("s3" in s.get("storage", {}) and "path" in s for s in specs)
    assert any(s.get("gpu") == "preferred" for s in specs)
    assert {s["modelType"]["name"] for s in specs} >= {"xgboost", "onnx", "pytorch"}


def _broken(change: str) -> dict[str, Any]:
    doc = copy.deepcopy(load_docs(DEPLOY / "samples" / "xgboost-s3.yaml")[0])
    spec = doc["spec"]
    if change == "no modelType":
        del spec["modelType"]
    elif change == "modelType without name":
        spec["modelType"] = {"version": "1"}
    elif change == "gpu: always":
        spec["gpu"] = "always"
    elif change == "misspelt storage field":
        spec["storage"]["bukket"] = "models"
    elif change == "s3 without secretKey":
        spec["storage"] = {"s3": {"bucket": "models"}}
    elif change == "parameters not strings":
        spec["storage"]["parameters"] = {"bucket": {"name": "models"}}
    return doc


@pytest.mark.parametrize(
    "change",
    [
        "no modelType",
        "modelType without name",
        "gpu: always",
        "misspelt storage field",
        "s3 without secretKey",
        "parameters not strings",
    ],
)
def test_broken_predictors_are_refused(change: str) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(_broken(change), predictor_schema())


def test_status_as_the_controller_writes_it() -> None:
    schema = predictor_schema()
    doc = load_docs(DEPLOY / "samples" / "xgboost-s3.yaml")[0]
    doc["status"] = {
        "available": True,
        "activeModelState": "Loaded",
        "targetModelState": "",
        "transitionStatus": "UpToDate",
        "totalCopies": 2,
        "failedCopies": 0,
        "grpcEndpoint": "grpc://mesh-router.mesh:8033",
        "httpEndpoint": "http://mesh-router.mesh:8008",
        "lastFailureInfo": {
            "location": "mesh-pod-0",
            "reason": "ModelLoadFailed",
            "message": "boom",
            "modelId": "fraud-xgboost",
            "time": "2025-01-02T03:04:05Z",
        },
    }
    checker = jsonschema.FormatChecker()
    jsonschema.validate(doc, schema, format_checker=checker)
    for field, value in [
        ("transitionStatus", "Done"),
        ("activeModelState", "Ready"),
        ("available", "yes"),
        ("totalCopies", 1.5),
    ]:
        bad = copy.deepcopy(doc)
        bad["status"][field] = value
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema, format_checker=checker)
    bad = copy.deepcopy(doc)
    bad["status"]["lastFailureInfo"]["reason"] = "Oops"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema, format_checker=checker)


# -- kustomize -------------------------------------------------------------------------------


def resolve_pointer(doc: Any, pointer: str) -> Any:
    node = doc
    for part in pointer.lstrip("/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


@pytest.mark.parametrize(
    "kustomization", kustomization_files(), ids=lambda p: str(p.parent.relative_to(DEPLOY))
)
def test_kustomization_files_exist_and_patches_have_targets(kustomization: Path) -> None:
    directory = kustomization.parent
    k = load_docs(kustomization)[0]
    assert k["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert k["kind"] == "Kustomization"
    for entry in k.get("resources", []):
        target = directory / entry
        assert target.exists(), f"{kustomization}: {entry} does not exist"
        if target.is_dir():
            assert (target / "kustomization.yaml").exists(), f"{entry}: no kustomization.yaml"
    docs = kustomize_docs(directory)
    for entry in patch_entries(kustomization):
        path = directory / entry["path"]
        assert path.exists(), f"{kustomization}: patch {entry['path']} does not exist"
        patch = load_docs(path)[0]
        if "target" in entry:
            target = find(docs, entry["target"]["kind"], entry["target"]["name"])
            assert isinstance(patch, list), f"{path}: a targeted patch here is a JSON patch"
            for op in patch:
                parent, _, last = op["path"].rpartition("/")
                holder = resolve_pointer(target, parent)
                if op["op"] == "add" and last == "-":
                    assert isinstance(holder, list), op
                elif op["op"] == "test":
                    assert resolve_pointer(target, op["path"]) == op["value"], op
                else:
                    resolve_pointer(target, op["path"])
        else:
            target = find(docs, patch["kind"], patch["metadata"]["name"])
            assert patch["apiVersion"] == target["apiVersion"]
            if patch["kind"] in WORKLOADS:
                names = {c["name"] for c in containers(target["spec"]["template"]["spec"])}
                for c in containers(patch["spec"]["template"]["spec"]):
                    assert c["name"] in names, f"{path}: no container {c['name']} to patch"
    for image in k.get("images", []):
        assert image["name"] and (image.get("newName") or image.get("newTag")), image


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    # `make test` installs it (the Makefile's kubectl target): missing is a broken setup.
    assert kubectl is not None, "kubectl is missing: run `make kubectl` (overlays not rendered)"
    result = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.mark.parametrize("overlay", ["cpu", "gpu", "internal-tls"])
def test_overlays_render_into_valid_objects(overlay: str) -> None:
    docs = render(overlay)
    version = KUBERNETES_VERSIONS[-1]
    for doc in docs:
        if doc["kind"] in ("ClusterRole", "ClusterRoleBinding"):  # cluster-wide
            for subject in doc.get("subjects", []):
                assert subject["namespace"] == "mesh", doc["metadata"]["name"]
        elif doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "mesh", doc["metadata"]["name"]
        if doc["kind"] not in NO_SCHEMA:
            kubernetes_validate.validate(doc, version, strict=True)
    images = {
        c["name"]: c["image"]
        for d in docs
        if d["kind"] in WORKLOADS
        for c in containers(d["spec"]["template"]["spec"])
    }
    serving = "cuda" if overlay == "gpu" else "cpu"
    assert images["pod"] == images["puller"] == f"{MESH_IMAGE}:{serving}"
    assert images["router"] == images["controller"] == f"{MESH_IMAGE}:cpu"
    spec = find(docs, "Deployment", "mesh-pod")["spec"]["template"]["spec"]
    pod = spec["containers"][0]
    assert pod["name"] == "pod"
    if overlay == "gpu":
        assert "--device=cuda" in pod["args"]
        assert "--label=gpu=true" in pod["args"]  # where `gpu: required` Predictors may go
        assert pod["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert spec["nodeSelector"] and spec["tolerations"]
        settings = run_mesh(pod)
        assert settings.device == "cuda"
    else:
        assert not any(a.startswith("--device") for a in pod["args"])
        assert "nvidia.com/gpu" not in pod["resources"]["limits"]


def test_the_internal_tls_overlay_gives_pods_and_routers_their_certificates() -> None:
    docs = render("internal-tls")
    pod_spec = find(docs, "Deployment", "mesh-pod")["spec"]["template"]["spec"]
    router_spec = find(docs, "Deployment", "mesh-router")["spec"]["template"]["spec"]
    secrets = {}
    for spec in (pod_spec, router_spec):
        c = spec["containers"][0]
        volumes = {v["name"]: v for v in spec["volumes"]}
        (mount,) = [m for m in c["volumeMounts"] if m["name"] == "pod-tls"]
        assert mount["readOnly"]
        secrets[c["name"]] = (volumes["pod-tls"]["secret"]["secretName"], mount["mountPath"])
    assert secrets == {
        "pod": ("mesh-pod-tls", "/tls"),
        "router": ("mesh-router-pod-tls", "/pod-tls"),
    }
    # The settings each process would serve with: mutual TLS on the pod, TLS to pods on the
    # router, both from the mounted files, and the name the pods' shared certificate carries.
    pod_container = pod_spec["containers"][0]
    pod = run_mesh(pod_container)
    assert (pod.tls.cert, pod.tls.key, pod.tls.ca) == (
        Path("/tls/tls.crt"), Path("/tls/tls.key"), Path("/tls/ca.crt"),
    )  # fmt: skip
    router = run_mesh(router_spec["containers"][0])
    assert (router.pod_tls.ca, router.pod_tls.cert, router.pod_tls.key) == (
        Path("/pod-tls/ca.crt"), Path("/pod-tls/tls.crt"), Path("/pod-tls/tls.key"),
    )  # fmt: skip
    assert router.pod_tls.server_name == "mesh-pod"
    # The kubelet's gRPC probe cannot speak TLS: TCP probes on the gRPC port instead.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert pod_container[probe].keys() & {"grpc", "tcpSocket"} == {"tcpSocket"}, probe
        assert pod_container[probe]["tcpSocket"]["port"] == 8085


# -- selectors, ports, resources, probes -----------------------------------------------------


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def workloads_selected(docs: list[dict[str, Any]], selector: dict[str, str]) -> list[Any]:
    return [
        doc
        for doc in docs
        if doc["kind"] in WORKLOADS
        and matches(selector, doc["spec"]["template"]["metadata"]["labels"])
    ]


def test_workload_selectors_match_their_pod_labels() -> None:
    for doc in BASE:
        if doc["kind"] in WORKLOADS:
            selector = doc["spec"]["selector"]["matchLabels"]
            assert selector and matches(selector, doc["spec"]["template"]["metadata"]["labels"])
            # No two workloads share pods.
            assert workloads_selected(BASE, selector) == [doc], doc["metadata"]["name"]


def test_services_select_pods_and_name_their_ports() -> None:
    for doc in BASE:
        if doc["kind"] != "Service":
            continue
        name = doc["metadata"]["name"]
        selected = workloads_selected(BASE, doc["spec"]["selector"])
        assert len(selected) == 1, f"Service {name} selects {len(selected)} workloads"
        ports = {
            p["name"]: p["containerPort"]
            for c in selected[0]["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        for port in doc["spec"]["ports"]:
            assert port["targetPort"] in ports, f"Service {name}: no container port {port}"
            assert ports[port["targetPort"]] == port["port"], f"Service {name}: {port}"


def test_router_service_ports() -> None:
    ports = {p["name"]: p["port"] for p in find(BASE, "Service", "mesh-router")["spec"]["ports"]}
    assert ports == {"grpc": 8033, "http": 8008, "metrics": 2112}


def test_statefulset_and_disruption_budgets() -> None:
    etcd = find(BASE, "StatefulSet", "mesh-etcd")
    headless = find(BASE, "Service", etcd["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert etcd["spec"]["volumeClaimTemplates"]
    assert find(BASE, "Service", "mesh-etcd")["spec"]["ports"][0]["port"] == 2379
    for doc in BASE:
        if doc["kind"] == "PodDisruptionBudget":
            selector = doc["spec"]["selector"]["matchLabels"]
            assert len(workloads_selected(BASE, selector)) == 1, doc["metadata"]["name"]


def test_service_monitors_select_services() -> None:
    monitors = [d for d in kustomize_docs(DEPLOY / "monitoring") if d["kind"] == "ServiceMonitor"]
    assert {m["metadata"]["name"] for m in monitors} == {
        "mesh-router", "mesh-pod", "mesh-controller",
    }  # fmt: skip
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(monitor["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
        selector = monitor["spec"]["selector"]["matchLabels"]
        services = [
            d for d in BASE if d["kind"] == "Service" and matches(selector, d["metadata"]["labels"])
        ]
        names = {p["name"] for s in services for p in s["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert set(endpoint) <= {"port", "interval", "path", "scrapeTimeout"}, endpoint
            assert endpoint["port"] in names, f"{monitor['metadata']['name']}: {endpoint}"


def test_every_container_has_resources_and_probes() -> None:
    for doc, spec in pod_specs(BASE):
        for c in containers(spec):
            where = f"{doc['metadata']['name']}/{c['name']}"
            for section in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"].get(section, {})), where
            assert "livenessProbe" in c, f"{where}: no liveness probe"
            grpc_ports = [p["containerPort"] for p in c.get("ports", []) if p["name"] == "grpc"]
            if grpc_ports:
                for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                    assert c[probe]["grpc"]["port"] == grpc_ports[0], f"{where}: {probe}"
            names = {p["name"] for p in c.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                assert port is None or port in names or isinstance(port, int), where


def test_volumes_and_downward_api_references() -> None:
    for doc, spec in pod_specs(BASE):
        volumes = {v["name"] for v in spec.get("volumes", [])}
        volumes |= {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}
        names = {c["name"] for c in containers(spec)}
        for c in containers(spec):
            for mount in c.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{c['name']}: no volume {mount['name']}"
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("resourceFieldRef")
                if ref:
                    assert ref["containerName"] in names, env
                    resource = ref["resource"].split(".", 1)
                    assert resource[1] in c["resources"][resource[0]], env


def test_serving_pod_and_puller_share_the_cache() -> None:
    spec = find(BASE, "Deployment", "mesh-pod")["spec"]["template"]["spec"]
    by_name = {c["name"]: c for c in spec["containers"]}
    pod, puller = by_name["pod"], by_name["puller"]
    pod_settings, puller_settings = run_mesh(pod), run_mesh(puller)
    # The pod dials the puller's listening address, and opens the paths the puller returns.
    assert pod_settings.puller == puller_settings.listen
    cache = puller_settings.cache_dir
    mounts = {
        c["name"]: {m["mountPath"]: m["name"] for m in c["volumeMounts"]} for c in (pod, puller)
    }
    shared = [
        path
        for path, volume in mounts["puller"].items()
        if cache.is_relative_to(path) and mounts["pod"].get(path) == volume
    ]
    assert shared, f"the cache {cache} is on no volume mounted at the same path in both"
    storage = puller_settings.storage_config
    assert storage is not None
    volume = mounts["puller"][str(storage)]
    secret = {v["name"]: v for v in spec["volumes"]}[volume]["secret"]["secretName"]
    assert secret == "storage-config"
    # Two processes in one network namespace: their metrics ports differ.
    declared = {c["name"]: {p["containerPort"] for p in c["ports"]} for c in (pod, puller)}
    assert pod_settings.server.metrics_port in declared["pod"]
    assert pod_settings.server.port in declared["pod"]
    # Routers' inference goes to the data port: fixed and declared, so a policy can admit it.
    assert pod_settings.data_port in declared["pod"]
    assert pod_settings.data_port not in (
        pod_settings.server.port,
        pod_settings.server.metrics_port,
    )
    assert puller_settings.metrics.metrics_port in declared["puller"]
    assert pod_settings.server.metrics_port != puller_settings.metrics.metrics_port
    # SIGTERM: the hand-off, then requests in flight, then unloading, within the grace period.
    drain = pod_settings.handoff_timeout + pod_settings.drain_timeout
    assert spec["terminationGracePeriodSeconds"] >= drain + 10
    # The pod registers its own name and its pod IP with the port it serves on.
    assert pod_settings.pod_id == FIELD_VALUES["metadata.name"]
    assert pod_settings.advertise == f"{FIELD_VALUES['status.podIP']}:{pod_settings.server.port}"
    assert advertised_address(pod_settings, pod_settings.server.port) == "10.1.2.3:8085"
    assert pod_settings.etcd.endpoints == "http://mesh-etcd:2379"


def test_pod_reads_its_memory_limit() -> None:

    spec = find(BASE, "Deployment", "mesh-pod")["spec"]["template"]["spec"]
    pod = spec["containers"][0]
    env = {e["name"]: e for e in pod["env"]}
    ref = env["MESH_POD_MEMORY_LIMIT"]["valueFrom"]["resourceFieldRef"]
    assert ref == {"containerName": "pod", "resource": "limits.memory"}
    settings = run_mesh(pod)
    assert settings.memory_limit == quantity(pod["resources"]["limits"]["memory"])


# -- the mesh command lines ------------------------------------------------------------------


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__()
        self.parser = parser


def subcommands() -> set[str]:
    def capture(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise _Parsed(self)

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = capture  # type: ignore[method-assign]
    try:
        cli.main([])
    except _Parsed as parsed:
        for action in parsed.parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return set(action.choices)
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
    raise AssertionError("mesh has no subcommands")


def container_env(c: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet builds it (downward API values made up)."""
    env: dict[str, str] = {}
    for item in c.get("env", []):
        if "value" in item:
            env[item["name"]] = expand(item["value"], env)
        elif "fieldRef" in item["valueFrom"]:
            env[item["name"]] = FIELD_VALUES[item["valueFrom"]["fieldRef"]["fieldPath"]]
        elif "resourceFieldRef" in item["valueFrom"]:
            section, key = item["valueFrom"]["resourceFieldRef"]["resource"].split(".", 1)
            env[item["name"]] = str(int(quantity(c["resources"][section][key])))
        else:
            raise AssertionError(f"{c['name']}: env {item['name']} comes from what?")
    return env


def expand(text: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), text)


def run_mesh(c: dict[str, Any]) -> Any:
    """Run `mesh <args>` with the container's environment through cli.main, up to the point
    where the process would start serving: the settings it would serve with."""
    env = container_env(c)
    argv = [expand(a, env) for a in c["args"]]
    command = argv[0]
    # Where each command's process starts: replaced, so that nothing starts.
    entry = {
        "pod": "mesh.pod.server.serve",
        "router": "mesh.router.server.serve",
        "puller": "mesh.puller.server.serve",
        "controller": "mesh.controller.server.run",
    }[command]
    captured: list[Any] = []

    async def serve(settings: Any, *args: Any, **kwargs: Any) -> None:
        captured.append(settings)

    def run(settings: Any, *args: Any, **kwargs: Any) -> None:
        captured.append(settings)

    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("MESH_"):
                mp.delenv(name)
        for name, value in env.items():
            mp.setenv(name, value)
        mp.setattr("mesh.logs.configure", lambda *a, **k: None)
        mp.setattr(entry, run if command == "controller" else serve)
        code = cli.main(argv)
    assert code == 0, f"mesh {' '.join(argv)} exited {code}"
    (settings,) = captured
    return settings


@pytest.mark.parametrize("command", ["pod", "puller", "router"])
def test_mesh_arguments_are_accepted(command: str) -> None:
    c = mesh_containers(BASE)[command]
    settings = run_mesh(c)
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    if command in ("pod", "router"):
        assert settings.server.port == ports["grpc"]
    if command == "router":
        assert settings.etcd.endpoints == "http://mesh-etcd:2379"
        assert settings.router_id == FIELD_VALUES["metadata.name"]
    if "metrics" in ports or "puller-metrics" in ports:
        metrics = settings.metrics if command == "puller" else settings.server
        assert metrics.metrics_port in ports.values()


def test_controller_arguments_are_accepted() -> None:
    c = mesh_containers(BASE)["controller"]
    assert "controller" in subcommands()
    settings = run_mesh(c)
    namespace = FIELD_VALUES["metadata.namespace"]
    assert settings.namespace == namespace
    assert settings.router == "mesh-router:8033"
    assert settings.lease_name == "mesh-controller"
    assert settings.grpc_endpoint == f"grpc://mesh-router.{namespace}:8033"
    assert settings.http_endpoint == f"http://mesh-router.{namespace}:8008"
    assert settings.metrics.metrics_port == c["ports"][0]["containerPort"]
    # The Role lets it get and update only the Lease it elects a leader on.
    role = find(BASE, "Role", "mesh-controller")
    leases = [r for r in role["rules"] if "leases" in r["resources"] and "update" in r["verbs"]]
    assert [r.get("resourceNames") for r in leases] == [
        [settings.lease_name, f"{settings.lease_name}-isvc"]
    ]


def test_env_names_are_settings_fields() -> None:
    from mesh.pod.settings import PodSettings
    from mesh.puller.settings import PullerSettings
    from mesh.router.settings import RouterSettings

    models: dict[str, Any] = {"POD": PodSettings, "ROUTER": RouterSettings}
    models["PULLER"] = PullerSettings
    unknown = []
    for _, spec in pod_specs(BASE):
        for c in containers(spec):
            for item in c.get("env", []):
                match = re.fullmatch(r"MESH_([A-Z]+)_(\w+)", item["name"])
                if not match or match[1] not in models:
                    continue
                if match[2].lower() not in models[match[1]].model_fields:
                    unknown.append(item["name"])
    assert not unknown, f"no settings field for {unknown} (it would be ignored)"


def test_storage_config_example_parses() -> None:
    from mesh.puller.storage import StorageEntry

    (secret,) = load_docs(DEPLOY / "examples" / "storage-config.yaml")
    assert secret["kind"] == "Secret"
    assert secret["metadata"]["name"] == "storage-config"
    entries = {k: StorageEntry.parse(k, v) for k, v in secret["stringData"].items()}
    assert {"default", "localMinIO"} <= set(entries)
    assert entries["localMinIO"].type == "s3"
    for entry in entries.values():
        for field in ("access_key_id", "secret_access_key"):
            assert "REPLACE-ME" in entry.fields[field], "credentials must stay placeholders"
    # Every storage key a sample names is in the example.
    for path in sample_files():
        for doc in load_docs(path):
            storage = doc["spec"].get("storage", {})
            key = storage.get("key") or storage.get("s3", {}).get("secretKey") or "default"
            assert key in entries, f"{path.name}: storage key {key}"


# -- metrics ---------------------------------------------------------------------------------


@functools.cache
def exported_metrics() -> frozenset[str]:
    """Every series name mesh/ exports, as Prometheus sees it: counters as <name>_total,
    histograms as <name>_bucket, _sum and _count, gauges as they are."""
    suffixes = {
        "Counter": ("_total",),
        "Gauge": ("",),
        "Histogram": ("_bucket", "_sum", "_count"),
        "Summary": ("", "_sum", "_count"),
    }
    # The router's request metrics, kept by its event loop (mesh.router.metrics), export as
    # prometheus_client's kinds do.
    suffixes |= {"LoopCounter": suffixes["Counter"], "LoopHistogram": suffixes["Histogram"]}
    names: set[str] = set()
    for path in (ROOT / "mesh").rglob("*.py"):
        if "gen" in path.relative_to(ROOT / "mesh").parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            kind = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            first = node.args[0]
            if kind in suffixes and isinstance(first, ast.Constant):
                name = str(first.value)
                if kind in ("Counter", "LoopCounter"):
                    name = name.removesuffix("_total")
                names |= {name + s for s in suffixes[kind]}
    return frozenset(names)


def queried_metrics(exprs: list[str]) -> set[str]:
    found = set()
    for expr in exprs:
        expr = re.sub(r'"[^"]*"', '""', expr)  # label values are not metric names
        found |= set(re.findall(r"\bmesh_[A-Za-z0-9_:]+", expr))
    return found


def dashboard_exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            elif key == "query" and isinstance(value, dict):
                yield value.get("query", "")
            else:
                yield from dashboard_exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from dashboard_exprs(item)


def test_metric_definitions_are_found() -> None:
    names = exported_metrics()
    assert {"mesh_pod_used_bytes", "mesh_pod_capacity_bytes", "mesh_router_requests_total"} <= names
    assert "mesh_router_cache_miss_seconds_bucket" in names


def test_dashboard_queries_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = list(dashboard_exprs(dashboard))
    used = queried_metrics(exprs)
    assert len(exprs) >= 15 and len(used) >= 12
    missing = used - exported_metrics()
    assert not missing, f"the dashboard queries metrics mesh does not export: {sorted(missing)}"


def test_dashboard_shape() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("capacity", "miss", "evictions", "per pod", "models loaded"):
        assert topic in titles, topic
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            # Every PromQL selector is scoped to the chosen namespaces.
            for name in queried_metrics([target["expr"]]):
                assert re.search(rf"{name}{{[^}}]*namespace=~\"\$namespace\"", target["expr"])


def test_adapter_rules_and_hpa_use_exported_metrics() -> None:
    (values,) = load_docs(ADAPTER_VALUES)
    rules = values["rules"]["custom"]
    exprs = [r["seriesQuery"] for r in rules] + [r["metricsQuery"] for r in rules]
    missing = queried_metrics(exprs) - exported_metrics()
    assert not missing, sorted(missing)
    served = {r["name"]["as"] for r in rules}
    (hpa,) = load_docs(DEPLOY / "examples" / "hpa-capacity.yaml")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "mesh-pod"
    find(BASE, "Deployment", hpa["spec"]["scaleTargetRef"]["name"])
    for metric in hpa["spec"]["metrics"]:
        assert metric["pods"]["metric"]["name"] in served, metric


# -- the image -------------------------------------------------------------------------------


def dockerfile_stages() -> dict[str, list[str]]:
    """Each stage's instructions (continuation lines joined), by stage name."""
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if match:
            current = [line]
            stages[match[2] or f"stage{len(stages)}"] = current
        else:
            current.append(line)
    return stages


def test_dockerfile_targets() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = set(pyproject["project"]["optional-dependencies"])
    assert pyproject["project"]["scripts"]["mesh"] == "mesh.cli:main"
    stages = dockerfile_stages()
    assert {"wheel", "cpu", "cuda"} <= set(stages)
    assert any("pip wheel" in line for line in stages["wheel"])
    assert list(stages)[-1] == "cpu", "a build without --target should give the CPU image"
    # A wheel's file name spells the distribution with underscores (PEP 427).
    wheel = re.escape(pyproject["project"]["name"].replace("-", "_"))
    installs = {}
    for name in ("cpu-build", "cuda-build"):
        lines = " ".join(stages[name])
        (wanted,) = re.findall(rf"/wheels/{wheel}-\*\.whl\)\[([a-z0-9,-]+)\]", lines)
        installs[name] = set(wanted.split(","))
        assert installs[name] <= extras, f"{name}: extras not in pyproject: {installs[name]}"
        assert "--index-url" in lines and "torch" in lines
    # Every process runs from one image: the controller's client too, where it is an extra.
    common = {"xgboost", "torch"} | ({"controller"} & extras)
    assert installs["cpu-build"] == {"onnx", *common}
    # onnx and onnx-gpu both provide `onnxruntime`: one or the other.
    assert installs["cuda-build"] == {"onnx-gpu", *common}
    text = (ROOT / "Dockerfile").read_text()
    assert "https://download.pytorch.org/whl/cpu" in text
    for name in ("cpu", "cuda"):
        lines = stages[name]
        assert any(re.fullmatch(r"USER\s+10001", line) for line in lines), f"{name}: not non-root"
        assert 'ENTRYPOINT ["mesh"]' in lines, name
    assert stages["cpu"][0].split()[1] == "${PYTHON_IMAGE}"
    assert re.search(r"ARG PYTHON_IMAGE=python:3\.12-slim", text)
    assert re.search(r"ARG CUDA_IMAGE=nvidia/cuda:\S+-runtime-\S+", text)
    # The manifests run as the image's user.
    for _, spec in pod_specs(BASE):
        if any(c["image"].startswith(MESH_IMAGE) for c in spec["containers"]):
            assert spec["securityContext"]["runAsUser"] == 10001


def test_dockerignore_keeps_what_the_build_copies() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    copied = set()
    for lines in dockerfile_stages().values():
        for line in lines:
            if line.startswith("COPY") and "--from" not in line:
                copied |= set(line.split()[1:-1])
    assert copied == {"pyproject.toml", "README.md", "mesh"}
    assert not copied & ignored
    assert {".git", ".venv", "tests"} <= ignored


# -- ServingRuntimes and InferenceServices -----------------------------------------------------


def crd_schema(name: str) -> dict[str, Any]:
    (path,) = [p for p in (DEPLOY / "crd").rglob(f"serving.kserve.io_{name}.yaml")]
    (doc,) = load_docs(path)
    (version,) = doc["spec"]["versions"]
    return strict(version["schema"]["openAPIV3Schema"])


def test_kserve_samples_validate_and_are_what_the_controller_reads() -> None:
    from mesh.controller import inferenceservice as isvc
    from mesh.controller import predictor as pr
    from mesh.controller.runtimes import choose_runtime, parse_runtime

    runtime = load_docs(DEPLOY / "samples" / "kserve" / "servingruntime-mesh.yaml")[0]
    service = load_docs(DEPLOY / "samples" / "kserve" / "inferenceservice-modelmesh.yaml")[0]
    jsonschema.validate(runtime, crd_schema("servingruntimes"))
    jsonschema.validate(service, crd_schema("inferenceservices"))
    pool = parse_runtime(runtime)
    assert pool.serves and pool.runtimes == ("onnx", "xgboost")
    spec = pr.parse(isvc.as_predictor(service), {pool.name})
    assert isvc.is_modelmesh(service)
    assert choose_runtime([pool], spec.model_type, spec.version, spec.runtime).name == pool.name
    broken = copy.deepcopy(runtime)
    broken["spec"]["supportedModelFormats"][0]["autoselect"] = True  # misspelt
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, crd_schema("servingruntimes"))


def test_the_two_runtime_crds_differ_only_in_scope_kind_and_the_pools_status() -> None:
    # A ServingRuntime's status shows its pool; a ClusterServingRuntime has a pool in every
    # namespace a controller runs in, and no status of one (mesh.controller.pools).
    own = load_docs(DEPLOY / "crd" / "serving.kserve.io_servingruntimes.yaml")[0]
    cluster = load_docs(DEPLOY / "crd" / "serving.kserve.io_clusterservingruntimes.yaml")[0]
    assert (own["spec"]["scope"], cluster["spec"]["scope"]) == ("Namespaced", "Cluster")
    (mine,), (theirs,) = copy.deepcopy((own["spec"]["versions"], cluster["spec"]["versions"]))
    status = mine["schema"]["openAPIV3Schema"]["properties"].pop("status")
    theirs_status = theirs["schema"]["openAPIV3Schema"]["properties"].pop("status")
    pool_columns = {"Ready", "Pods", "Desired", "Reason"}
    mine["additionalPrinterColumns"] = [
        c for c in mine["additionalPrinterColumns"] if c["name"] not in pool_columns
    ]
    assert mine == theirs
    assert theirs_status == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    assert set(status["properties"]) == {
        "deploymentName", "replicas", "readyReplicas", "observedGeneration", "conditions"
    }  # fmt: skip


def test_the_serving_runtime_status_the_controller_writes_fits_its_crd() -> None:
    from mesh.controller.runtimes import parse_runtime, runtime_status

    runtime = load_docs(DEPLOY / "samples" / "kserve" / "servingruntime-mesh.yaml")[0]
    status = runtime_status(parse_runtime(runtime), 2, 1, {}, "2026-12-02T10:00:00Z", 3)
    jsonschema.validate({**runtime, "status": status}, crd_schema("servingruntimes"))
    own = load_docs(DEPLOY / "crd" / "serving.kserve.io_servingruntimes.yaml")[0]
    (version,) = own["spec"]["versions"]
    nodes = dict(schema_nodes(version["schema"]["openAPIV3Schema"]))
    for column in version["additionalPrinterColumns"]:
        path = column["jsonPath"].replace('[?(@.type=="Ready")]', "[]")
        if path.startswith(".status."):  # the columns name fields the status has
            assert path in nodes, column


def test_the_controller_may_scale_deployments_and_read_runtimes() -> None:
    role = find(BASE, "Role", "mesh-controller")
    allowed = {(res, verb) for r in role["rules"] for res in r["resources"] for verb in r["verbs"]}
    for need in [("deployments/scale", "get"), ("deployments/scale", "update"),
                 ("deployments", "create"), ("deployments", "patch"),
                 ("servingruntimes", "list"), ("servingruntimes/status", "patch"),
                 ("inferenceservices", "watch"),
                 ("inferenceservices/status", "patch"), ("inferenceservices/finalizers", "update"),
                 ("pods", "patch")]:  # fmt: skip
        assert need in allowed, need
    cluster_role = find(BASE, "ClusterRole", "mesh-controller-runtimes")
    # Cluster-wide, nothing but reading the runtimes and blocking their deletion by a pool.
    assert [r["resources"] for r in cluster_role["rules"]] == [
        ["clusterservingruntimes"],
        ["clusterservingruntimes/finalizers"],
    ]
    assert set(cluster_role["rules"][0]["verbs"]) == {"get", "list", "watch"}
    assert cluster_role["rules"][1]["verbs"] == ["update"]
    leases = [r for r in role["rules"] if "leases" in r["resources"] and "update" in r["verbs"]]
    assert leases[0]["resourceNames"] == ["mesh-controller", "mesh-controller-isvc"]


def test_the_controller_may_block_its_pools_owners_deletion() -> None:
    # A pool's Deployment names its ServingRuntime (or ClusterServingRuntime) as owner with
    # blockOwnerDeletion; where the OwnerReferencesPermissionEnforcement admission plugin is on
    # (OpenShift, hardened clusters) that takes `update` on the owner's finalizers, or the
    # API server refuses the Deployment with 403 and the pool never exists.
    from mesh.controller import runtimes as rt

    granted: set[tuple[str, str]] = set()
    for _, doc in manifests():
        if doc.get("kind") in ("Role", "ClusterRole") and "controller" in doc["metadata"]["name"]:
            for rule in doc.get("rules") or []:
                for group in rule.get("apiGroups") or []:
                    for resource in rule.get("resources") or []:
                        if "update" in rule.get("verbs", []):
                            granted.add((group, resource))
    for cluster, plural in ((False, rt.SERVING_RUNTIMES), (True, rt.CLUSTER_SERVING_RUNTIMES)):
        runtime = rt.RuntimeSpec("r", cluster, "uid", (rt.ModelFormat("onnx"),))
        (owner,) = rt.deployment(runtime, "mesh", rt.PodTemplate(), 1)["metadata"][
            "ownerReferences"
        ]
        if owner.get("blockOwnerDeletion"):
            assert (rt.GROUP, f"{plural}/finalizers") in granted, plural
