"""Pools end to end: a ServingRuntime becomes a Deployment, the fake API server's kubelet runs
its replicas as real `mesh pod` processes on the test's etcd, and models (Predictors and
InferenceServices in ModelMesh mode) are served by them through a real router."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from mesh.controller.controller import Controller
from mesh.controller.kinds import INFERENCE_SERVICE
from mesh.controller.kube import PoolApi, PredictorApi
from mesh.controller.meshapi import MeshApi
from mesh.controller.pools import Pools, PoolSettings
from mesh.gen import management_pb2 as mpb
from tests.cluster.etcd_server import EtcdServer
from tests.controller.conftest import NAMESPACE, POLICY, predictor
from tests.helpers import RunningRouter, infer_request, output_array, running_router, wait_until
from tests.kube.apiserver import FakeKubeAPI
from tests.kube.kubelet import Kubelet
from tests.kube.resources import POOL_RESOURCES

pytestmark = pytest.mark.slow  # real etcd, router and pod processes

X = np.ones((1, 64), np.float32)
# Flags of the cluster's pods that name the cluster's addresses: the test gives its own.
_CLUSTER_FLAGS = ("--etcd=", "--etcd-prefix=", "--puller=", "--port=", "--metrics-port=",
                  "--handoff-timeout=", "--drain-timeout=", "--log-json")  # fmt: skip


def serving_runtime(name: str, *formats: str, **annotations: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ServingRuntime",
        "metadata": {"name": name, "namespace": NAMESPACE, "annotations": annotations},
        "spec": {
            "multiModel": True,
            "supportedModelFormats": [{"name": f, "autoSelect": True} for f in formats],
            "containers": [{"name": "server", "image": "ignored",
                            "resources": {"limits": {"memory": "2Gi"}}}],
        },
    }  # fmt: skip


def inference_service(name: str, model: dict[str, Any], modelmesh: bool = True) -> dict[str, Any]:
    annotations = {"serving.kserve.io/deploymentMode": "ModelMesh"} if modelmesh else {}
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": NAMESPACE, "annotations": annotations},
        "spec": {"predictor": {"model": model}},
    }


@pytest.fixture
def kube() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI(POOL_RESOURCES) as api:
        yield api


@pytest.fixture
def kubelet(
    kube: FakeKubeAPI, etcd: EtcdServer, prefix: str, model_dir: Path, tmp_path: Path
) -> Iterator[Kubelet]:
    def launch(args: list[str], env: dict[str, str], name: str) -> tuple[list[str], dict[str, str]]:
        kept = [a for a in args if not a.startswith(_CLUSTER_FLAGS)]
        env.pop("MESH_POD_ADVERTISE", None)  # $(POD_IP):8085; here the port is the kernel's
        return [
            sys.executable, "-m", "mesh", *kept,
            f"--etcd={etcd.url}", f"--etcd-prefix={prefix}", "--host=127.0.0.1", "--port=0",
            "--no-metrics", f"--storage-dir={model_dir}", "--capacity=1Gi", "--lease-ttl=5",
            "--drain-timeout=2", "--handoff-timeout=10",
        ], env  # fmt: skip

    with Kubelet(kube, {"pod": launch}, tmp_path) as running:
        yield running
        print(running.log_text())  # pytest shows it when the test failed


@pytest.fixture
def router(etcd: EtcdServer, prefix: str) -> Iterator[RunningRouter]:
    with running_router(etcd=etcd.url, etcd_prefix=prefix, leader_interval=0.3) as r:
        yield r


@pytest.fixture
def controllers(
    kube: FakeKubeAPI, router: RunningRouter, kubelet: Kubelet
) -> Iterator[tuple[Controller, Controller, Pools]]:
    client = kube.client()
    mesh = MeshApi(router.address, timeout=10)
    pools = Pools(PoolApi(client, NAMESPACE), mesh, PoolSettings(interval=0.3, min_pods=1))
    predictors = Controller(PredictorApi(client, NAMESPACE), mesh, POLICY, pools=pools)
    services = Controller(
        PredictorApi(client, NAMESPACE, "v1beta1", "inferenceservices"), mesh, POLICY,
        kind=INFERENCE_SERVICE, pools=pools, run_pools=False,
    )  # fmt: skip
    predictors.start()
    services.start()
    yield predictors, services, pools
    services.stop()
    predictors.stop()
    mesh.close()
    client.close()


def pool_pods(router: RunningRouter, pool: str) -> list[str]:
    status = router.management.GetMeshStatus(mpb.GetMeshStatusRequest(), timeout=10)
    return sorted(p.pod_id for p in status.pods if p.labels.get("pool") == pool and not p.draining)


def serve(router: RunningRouter, name: str) -> Any:
    response = router.v2.ModelInfer(infer_request(name, input=X), timeout=60)
    return output_array(response, "output")


def vmodel_target(router: RunningRouter, name: str) -> str | None:
    try:
        request = mpb.GetVModelStatusRequest(vmodel_id=name)
        return str(router.management.GetVModelStatus(request, timeout=10).target_model_id)
    except grpc.RpcError:
        return None


def test_a_serving_runtime_becomes_pods_that_serve_its_formats(
    kube: FakeKubeAPI, router: RunningRouter, kubelet: Kubelet,
    controllers: tuple[Controller, Controller, Pools],
) -> None:  # fmt: skip
    kube.create("servingruntimes", serving_runtime("onnx-rt", "onnx"))

    deployment = wait_until(lambda: kube.get("deployments", NAMESPACE, "mesh-pod-onnx-rt"))
    assert deployment["metadata"]["ownerReferences"][0]["name"] == "onnx-rt"
    members = wait_until(lambda: pool_pods(router, "onnx-rt"), timeout=60, what="a pool pod")
    assert members == kubelet.pods("mesh-pod-onnx-rt", NAMESPACE)

    kube.create("predictors", predictor("fraud", "onnx", "mlp"))
    wait_until(
        lambda: (kube.get("predictors", NAMESPACE, "fraud") or {}).get("status", {})
        .get("activeModelState") == "Loaded", timeout=60,
    )  # fmt: skip
    assert serve(router, "fraud").shape == (1, 10)
    status = router.management.GetMeshStatus(mpb.GetMeshStatusRequest(), timeout=10)
    holders = {c.pod_id for m in status.models if m.model_id.startswith("fraud-") for c in m.copies}
    assert holders and holders <= set(members)

    # A format no runtime lists: a clear status, nothing registered.
    kube.create("predictors", predictor("trees", "xgboost", "xgb"))
    failure = wait_until(
        lambda: (kube.get("predictors", NAMESPACE, "trees") or {}).get("status", {})
        .get("lastFailureInfo")
    )  # fmt: skip
    assert failure["reason"] == "NoSupportingRuntime"
    assert "xgboost" in failure["message"]


def test_an_inference_service_in_modelmesh_mode_is_served_and_its_status_written(
    kube: FakeKubeAPI, router: RunningRouter, kubelet: Kubelet,
    controllers: tuple[Controller, Controller, Pools],
) -> None:  # fmt: skip
    _, services, _ = controllers
    kube.create("servingruntimes", serving_runtime("onnx-rt", "onnx"))
    kube.create("inferenceservices", inference_service(
        "fraud", {"modelFormat": {"name": "onnx"}, "storage": {"path": "mlp"}}))  # fmt: skip
    kube.create("inferenceservices", inference_service(
        "kserve-one", {"modelFormat": {"name": "onnx"}, "storageUri": "s3://b/p"}, modelmesh=False))  # fmt: skip
    kube.create("inferenceservices", inference_service(
        "tabular", {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://b/p"}))  # fmt: skip
    kube.create("inferenceservices", inference_service("broken", {"storageUri": "s3://b/p"}))

    def loaded(name: str) -> dict[str, Any] | None:
        status = (kube.get("inferenceservices", NAMESPACE, name) or {}).get("status") or {}
        loaded = (status.get("modelStatus") or {}).get("states", {}).get("activeModelState")
        return status if loaded == "Loaded" else None

    status = wait_until(lambda: loaded("fraud"), timeout=90, what="fraud Loaded")
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {"PredictorReady": "True", "Ready": "True"}
    assert status["modelStatus"]["copies"]["totalCopies"] >= 1
    assert status["url"] == POLICY.grpc_endpoint
    assert serve(router, "fraud").shape == (1, 10)

    # Not ours: no finalizer, no status, nothing registered.
    assert services.reconcile("kserve-one") is None
    kserve_one = kube.get("inferenceservices", NAMESPACE, "kserve-one")
    assert kserve_one is not None
    assert "status" not in kserve_one and not kserve_one["metadata"].get("finalizers")

    for name, reason in (("tabular", "NoSupportingRuntime"), ("broken", "InvalidPredictorSpec")):
        status = wait_until(
            lambda n=name: (kube.get("inferenceservices", NAMESPACE, n) or {}).get("status")
        )
        conditions = {c["type"]: c for c in status["conditions"]}
        assert conditions["Ready"]["status"] == "False"
        assert conditions["Ready"]["reason"] == reason
        assert status["modelStatus"]["transitionStatus"] == "InvalidSpec"
        assert status["modelStatus"]["lastFailureInfo"]["reason"] == reason
    mesh_models = router.management.ListModels(mpb.ListModelsRequest(), timeout=10).models
    assert sorted(m.model_id.rpartition("-")[0] for m in mesh_models) == ["fraud"]

    kube.delete("inferenceservices", NAMESPACE, "fraud")
    wait_until(lambda: kube.get("inferenceservices", NAMESPACE, "fraud") is None, timeout=30)
    assert not router.management.ListModels(mpb.ListModelsRequest(), timeout=10).models


def test_pool_size_changes_go_through_the_scale_subresource_to_running_pods(
    kube: FakeKubeAPI, router: RunningRouter, kubelet: Kubelet,
    controllers: tuple[Controller, Controller, Pools],
) -> None:  # fmt: skip
    kube.create("servingruntimes", serving_runtime("onnx-rt", "onnx"))
    wait_until(lambda: len(pool_pods(router, "onnx-rt")) == 1, timeout=60, what="one pool pod")

    kube.patch("servingruntimes", NAMESPACE, "onnx-rt", {"metadata": {"annotations": {
        "mesh.serving.kserve.io/min-pods": "2"}}})  # fmt: skip
    wait_until(lambda: len(pool_pods(router, "onnx-rt")) == 2, timeout=60, what="two pool pods")
    scale_puts = [r for r in kube.requests
                  if r.method == "PUT" and r.path.endswith("/deployments/mesh-pod-onnx-rt/scale")]  # fmt: skip
    assert scale_puts
    deployment_writes = [r for r in kube.requests if r.method in ("PUT", "PATCH")
                         and r.path.endswith("/deployments/mesh-pod-onnx-rt")]  # fmt: skip
    assert not deployment_writes  # the replicas move only through /scale
    # `kubectl get servingruntime` shows the pool as its pods run.
    wait_until(lambda: runtime_pods(kube) == (2, 2, "True"), timeout=60, what="2 of 2 ready")

    kube.patch("servingruntimes", NAMESPACE, "onnx-rt", {"metadata": {"annotations": {
        "mesh.serving.kserve.io/min-pods": "1", "mesh.serving.kserve.io/max-pods": "1"}}})  # fmt: skip
    wait_until(lambda: len(kubelet.pods("mesh-pod-onnx-rt", NAMESPACE)) == 1, timeout=60)
    wait_until(lambda: len(pool_pods(router, "onnx-rt")) == 1, timeout=60, what="the pod gone")
    deployment = kube.get("deployments", NAMESPACE, "mesh-pod-onnx-rt")
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 1
    wait_until(lambda: runtime_pods(kube) == (1, 1, "True"), timeout=60, what="1 of 1 ready")


def runtime_pods(kube: FakeKubeAPI, name: str = "onnx-rt") -> tuple[int, int, str]:
    """(desired pods, ready pods, Ready) as the ServingRuntime's status shows them."""
    status = (kube.get("servingruntimes", NAMESPACE, name) or {}).get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
    return status.get("replicas", -1), status.get("readyReplicas", -1), ready.get("status", "")


def test_a_pool_with_min_pods_zero_comes_from_zero_for_a_held_request_and_goes_back(
    kube: FakeKubeAPI, router: RunningRouter, kubelet: Kubelet
) -> None:
    client = kube.client()
    mesh = MeshApi(router.address, timeout=10)
    pools = Pools(PoolApi(client, NAMESPACE), mesh, PoolSettings(interval=0.3, window=3.0))
    predictors = Controller(PredictorApi(client, NAMESPACE), mesh, POLICY, pools=pools)
    predictors.start()
    try:
        kube.create("servingruntimes", serving_runtime("onnx-rt", "onnx", **{
            "mesh.serving.kserve.io/min-pods": "0",
            "mesh.serving.kserve.io/scale-down-after": "2"}))  # fmt: skip
        deployment = wait_until(lambda: kube.get("deployments", NAMESPACE, "mesh-pod-onnx-rt"))
        assert deployment["spec"]["replicas"] == 0
        kube.create("predictors", predictor("fraud", "onnx", "mlp"))
        # The Predictor's name (a vmodel) points at its model at once, with no pod to load it.
        model_id = wait_until(lambda: vmodel_target(router, "fraud"), what="the vmodel fraud")
        assert kubelet.pods("mesh-pod-onnx-rt", NAMESPACE) == []

        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(serve, router, "fraud")
            # Held by the router, reported by the management API, scaled from zero via /scale.
            demand = wait_until(
                lambda: answer.done() or router.management.GetMeshStatus(
                    mpb.GetMeshStatusRequest(), timeout=10).demand, what="the held request",
            )  # fmt: skip
            if answer.done():
                answer.result()
            assert [(d.pool, d.model_id, d.held) for d in demand] == [("onnx-rt", model_id, 1)]
            assert answer.result(timeout=90).shape == (1, 10)
        scale_puts = [r for r in kube.requests
                      if r.method == "PUT" and r.path.endswith("/deployments/mesh-pod-onnx-rt/scale")]  # fmt: skip
        assert scale_puts
        assert len(kubelet.pods("mesh-pod-onnx-rt", NAMESPACE)) == 1
        assert not router.management.GetMeshStatus(mpb.GetMeshStatusRequest(), timeout=10).demand

        # Idle past the window and scale-down-after: back to no pods.
        wait_until(
            lambda: not kubelet.pods("mesh-pod-onnx-rt", NAMESPACE) and not pool_pods(
                router, "onnx-rt"), timeout=90, what="the pool back at zero",
        )  # fmt: skip
        deployment = kube.get("deployments", NAMESPACE, "mesh-pod-onnx-rt")
        assert deployment is not None and deployment["spec"]["replicas"] == 0
    finally:
        predictors.stop()
        mesh.close()
        client.close()
