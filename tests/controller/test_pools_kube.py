"""Pools on the Kubernetes side: ServingRuntimes become Deployments, sized through /scale.

The fake API server and the real client; the mesh's view of its pods is set by the test
(tests/controller/fakemesh.py), so the pool policy's decisions are the test's to provoke. The
end-to-end path with real pods is tests/controller/test_pools.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from mesh.controller.kube import EventRecorder, PoolApi
from mesh.controller.meshapi import PoolsView
from mesh.controller.pools import Pools, PoolSettings
from mesh.controller.runtimes import PodTemplate
from mesh.placement.snapshot import HeldModel, PodView
from tests.controller.fakemesh import FakeMesh
from tests.kube.apiserver import FakeKubeAPI
from tests.kube.resources import POOL_RESOURCES, SERVING_RUNTIMES

NS = "ml"  # the namespace of tests.controller.conftest
GiB = 2**30


def runtime(name: str, *formats: str, cluster: bool = False, **spec: Any) -> dict[str, Any]:
    annotations = spec.pop("annotations", {})
    meta: dict[str, Any] = {"name": name, "annotations": annotations}
    if not cluster:
        meta["namespace"] = NS
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ClusterServingRuntime" if cluster else "ServingRuntime",
        "metadata": meta,
        "spec": {
            "multiModel": True,
            "supportedModelFormats": [{"name": f, "autoSelect": True} for f in formats],
            "containers": [{"name": "server", "image": "example/server:1"}],
            **spec,
        },
    }


@pytest.fixture
def kube() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI(POOL_RESOURCES) as api:
        yield api


@pytest.fixture
def mesh() -> FakeMesh:
    return FakeMesh()


@pytest.fixture
def pools(kube: FakeKubeAPI, mesh: FakeMesh) -> Iterator[Pools]:
    client = kube.client()
    settings = PoolSettings(
        min_pods=1, max_pods=4, scale_down_after=0.0, template=PodTemplate(image="mesh:test")
    )
    yield Pools(PoolApi(client, NS), mesh, settings, EventRecorder(client, NS))  # type: ignore[arg-type]
    client.close()


def pod(pod_id: str, capacity: int, *models: tuple[str, int], now: float = 1000.0) -> PodView:
    held = {m: HeldModel(m, size, now - 1, 0) for m, size in models}
    return PodView(
        pod_id, capacity, used=sum(s for _, s in models), models=held,
        labels={"pool": "onnx-rt"}, runtimes=frozenset({"onnx"}),
    )  # fmt: skip


def test_a_serving_runtime_becomes_a_deployment_it_owns(kube: FakeKubeAPI, pools: Pools) -> None:
    resources = {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "8Gi"}}
    created = kube.create(
        "servingruntimes",
        runtime(
            "onnx-rt", "onnx", "pytorch", "sklearn",
            labels={"team": "fraud"},
            containers=[{"name": "server", "image": "x", "resources": resources,
                         "env": [{"name": "OMP_NUM_THREADS", "value": "2"}]}],
            nodeSelector={"pool": "cpu"},
        ),
    )  # fmt: skip

    pools.reconcile()

    deployment = kube.get("deployments", NS, "mesh-pod-onnx-rt")
    assert deployment is not None
    owner = deployment["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "ServingRuntime", "onnx-rt", created["metadata"]["uid"], True,
    )  # fmt: skip
    template = deployment["spec"]["template"]
    assert template["metadata"]["labels"]["team"] == "fraud"
    assert (
        deployment["spec"]["selector"]["matchLabels"].items()
        <= template["metadata"]["labels"].items()
    )
    container = template["spec"]["containers"][0]
    assert container["image"] == "mesh:test"
    assert container["resources"] == resources
    assert {"name": "OMP_NUM_THREADS", "value": "2"} in container["env"]
    # The pods load only the runtimes of its formats (sklearn has none here) and carry its pool.
    assert "--runtimes=onnx,torch" in container["args"]
    assert "--label=pool=onnx-rt" in container["args"]
    assert template["spec"]["nodeSelector"] == {"pool": "cpu"}
    assert deployment["spec"]["replicas"] == 1


def test_runtimes_the_mesh_cannot_run_get_no_deployment(kube: FakeKubeAPI, pools: Pools) -> None:
    kube.create("servingruntimes", runtime("sk", "sklearn"))
    kube.create("servingruntimes", runtime("single", "onnx", multiModel=False))
    kube.create("servingruntimes", runtime("off", "onnx", disabled=True))

    pools.reconcile()

    assert kube.objects("deployments", NS) == []


def test_a_cluster_runtime_serves_the_namespace_unless_one_of_its_own_has_the_name(
    kube: FakeKubeAPI, pools: Pools
) -> None:
    kube.create("clusterservingruntimes", runtime("shared", "xgboost", cluster=True))
    kube.create("clusterservingruntimes", runtime("onnx-rt", "onnx", cluster=True))
    kube.create("servingruntimes", runtime("onnx-rt", "onnx", labels={"own": "yes"}))

    pools.reconcile()

    by_name = {d["metadata"]["name"]: d for d in kube.objects("deployments", NS)}
    assert sorted(by_name) == ["mesh-pod-onnx-rt", "mesh-pod-shared"]
    assert by_name["mesh-pod-shared"]["metadata"]["ownerReferences"][0]["kind"] == (
        "ClusterServingRuntime"
    )
    assert by_name["mesh-pod-onnx-rt"]["spec"]["template"]["metadata"]["labels"]["own"] == "yes"
    assert [r.name for r in pools.runtimes()] == ["onnx-rt", "shared"]


def test_the_pool_policy_scales_the_deployment_through_the_scale_subresource(
    kube: FakeKubeAPI, pools: Pools, mesh: FakeMesh
) -> None:
    kube.create("servingruntimes", runtime("onnx-rt", "onnx"))
    pools.reconcile()
    # One pod whose models used within the window fill it: the bytes need is two pods.
    mesh.pool_view = PoolsView(
        {"onnx-rt": [pod("p0", GiB, ("a", GiB // 2), ("b", GiB // 2))]}, now=1000.0
    )
    kube.reset_requests()

    pools.reconcile()

    scale_writes = [r for r in kube.requests if r.path.endswith("/mesh-pod-onnx-rt/scale")]
    assert [r.method for r in scale_writes] == ["GET", "PUT"]
    assert not [r for r in kube.requests if r.method in ("PUT", "PATCH") and r.path.endswith(
        "/deployments/mesh-pod-onnx-rt")]  # fmt: skip
    assert kube.get("deployments", NS, "mesh-pod-onnx-rt")["spec"]["replicas"] == 2  # type: ignore[index]


def test_a_lowered_bound_shrinks_the_pool_at_once(
    kube: FakeKubeAPI, pools: Pools, mesh: FakeMesh
) -> None:
    kube.create("servingruntimes", runtime("onnx-rt", "onnx", annotations={
        "mesh.serving.kserve.io/min-pods": "3"}))  # fmt: skip
    pools.reconcile()
    mesh.pool_view = PoolsView({"onnx-rt": [pod(f"p{i}", GiB) for i in range(3)]}, now=1000.0)
    pools.reconcile()
    assert kube.get("deployments", NS, "mesh-pod-onnx-rt")["spec"]["replicas"] == 3  # type: ignore[index]

    kube.patch("servingruntimes", NS, "onnx-rt", {"metadata": {"annotations": {
        "mesh.serving.kserve.io/min-pods": "1", "mesh.serving.kserve.io/max-pods": "1"}}})  # fmt: skip
    pools.reconcile()

    assert kube.get("deployments", NS, "mesh-pod-onnx-rt")["spec"]["replicas"] == 1  # type: ignore[index]


def test_a_scale_written_meanwhile_is_not_overwritten(
    kube: FakeKubeAPI, pools: Pools, mesh: FakeMesh
) -> None:
    kube.create("servingruntimes", runtime("onnx-rt", "onnx"))
    pools.reconcile()
    mesh.pool_view = PoolsView(
        {"onnx-rt": [pod("p0", GiB, ("a", GiB // 2), ("b", GiB // 2))]}, now=1000.0
    )
    kube.fail_next("PUT", r"/mesh-pod-onnx-rt/scale$", 409)

    pools.reconcile()  # the 409 is logged; the next round reads the scale again

    assert kube.fired and kube.fired[0].code == 409
    assert kube.get("deployments", NS, "mesh-pod-onnx-rt")["spec"]["replicas"] == 1  # type: ignore[index]
    pools.reconcile()
    assert kube.get("deployments", NS, "mesh-pod-onnx-rt")["spec"]["replicas"] == 2  # type: ignore[index]


def test_a_changed_runtime_updates_the_pod_template_and_keeps_the_replicas(
    kube: FakeKubeAPI, pools: Pools
) -> None:
    kube.create("servingruntimes", runtime("onnx-rt", "onnx"))
    pools.reconcile()
    kube.patch("deployments", NS, "mesh-pod-onnx-rt", {"spec": {"replicas": 3}})

    kube.patch("servingruntimes", NS, "onnx-rt", {"spec": {"supportedModelFormats": [
        {"name": "onnx", "autoSelect": True}, {"name": "xgboost", "autoSelect": True}]}})  # fmt: skip
    pools.reconcile()

    deployment = kube.get("deployments", NS, "mesh-pod-onnx-rt")
    assert deployment is not None
    assert (
        "--runtimes=onnx,xgboost" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    )
    assert deployment["spec"]["replicas"] == 3


def test_a_runtime_with_bad_bounds_gets_a_warning_event_and_no_pool(
    kube: FakeKubeAPI, pools: Pools
) -> None:
    kube.create("servingruntimes", runtime("onnx-rt", "onnx", annotations={
        "mesh.serving.kserve.io/max-pods": "lots"}))  # fmt: skip

    pools.reconcile()
    pools.reconcile()  # reported once, not at every round

    events = kube.objects("events", NS)
    assert [(e["reason"], e["involvedObject"]["name"]) for e in events] == [
        ("InvalidRuntime", "onnx-rt")
    ]
    assert "max-pods" in events[0]["message"] and "'lots'" in events[0]["message"]
    assert kube.objects("deployments", NS) == []


def test_a_scale_down_marks_the_pod_the_policy_chose_for_the_replica_set(
    kube: FakeKubeAPI, pools: Pools, mesh: FakeMesh
) -> None:
    kube.create("servingruntimes", runtime("onnx-rt", "onnx"))
    pools.reconcile()
    kube.patch("deployments", NS, "mesh-pod-onnx-rt", {"spec": {"replicas": 2}})
    for name in ("mesh-pod-onnx-rt-hot", "mesh-pod-onnx-rt-idle"):
        kube.create("pods", {"metadata": {"name": name, "namespace": NS}, "spec": {}})
    # One pod holds the only copy of a model in use; the other holds nothing: it goes.
    mesh.pool_view = PoolsView(
        {"onnx-rt": [pod("mesh-pod-onnx-rt-hot", GiB, ("a", GiB // 8)),
                     pod("mesh-pod-onnx-rt-idle", GiB)]},
        now=1000.0,
    )  # fmt: skip

    pools.reconcile()

    def cost(name: str) -> str | None:
        pod_obj = kube.get("pods", NS, name) or {}
        annotations = pod_obj.get("metadata", {}).get("annotations") or {}
        return annotations.get("controller.kubernetes.io/pod-deletion-cost")

    assert cost("mesh-pod-onnx-rt-idle") == "-1000"
    assert cost("mesh-pod-onnx-rt-hot") is None
    assert kube.get("deployments", NS, "mesh-pod-onnx-rt")["spec"]["replicas"] == 1  # type: ignore[index]


def test_a_controller_that_just_started_places_a_model_on_its_pool_at_once(
    kube: FakeKubeAPI, mesh: FakeMesh
) -> None:
    from tests.controller.conftest import build_controller, predictor

    kube.create("servingruntimes", runtime("onnx-rt", "onnx"))
    created = kube.create("predictors", predictor("fraud", "onnx", "mlp"))
    controller = build_controller(kube, mesh, pools=True)  # not started: no pools round yet
    controller._observe("ADDED", created)

    controller.process("fraud")

    (spec,) = mesh.models.values()
    assert spec.required_labels == {"pool": "onnx-rt"}


def test_kserves_single_model_runtimes_leave_predictors_on_any_pod(
    kube: FakeKubeAPI, mesh: FakeMesh
) -> None:
    # A cluster with KServe installed has its ClusterServingRuntimes (multiModel unset: not
    # ModelMesh runtimes). They make no pool, so they must not take the namespace off the
    # older behaviour: a Predictor goes to any pod of its runtime, not NoSupportingRuntime.
    from tests.controller.conftest import build_controller, predictor

    single = runtime("kserve-xgbserver", "xgboost", cluster=True)
    del single["spec"]["multiModel"]
    kube.create("clusterservingruntimes", single)
    created = kube.create("predictors", predictor("fraud", "xgboost", "model.json"))
    controller = build_controller(kube, mesh, pools=True)
    controller._observe("ADDED", created)

    controller.process("fraud")

    (spec,) = mesh.models.values()
    assert spec.required_labels == {}
    status = kube.get("predictors", NS, "fraud")["status"]  # type: ignore[index]
    assert status["transitionStatus"] != "InvalidSpec", status


def test_the_api_servers_defaults_in_the_pod_template_cause_no_write_each_round(
    kube: FakeKubeAPI, pools: Pools
) -> None:
    # A real API server fills defaults into what it stores (an env fieldRef gets apiVersion
    # v1, a resourceFieldRef divisor "0", quantities their canonical form). Comparing the
    # stored template with the wanted one field by field saw a change every round and patched
    # the Deployment every --pool-interval, forever.
    kube.create("servingruntimes", runtime("onnx-rt", "onnx"))
    pools.reconcile()
    stored = kube.get("deployments", NS, "mesh-pod-onnx-rt")
    assert stored is not None
    container = stored["spec"]["template"]["spec"]["containers"][0]
    for env in container["env"]:
        source = env.get("valueFrom") or {}
        if "fieldRef" in source:
            source["fieldRef"]["apiVersion"] = "v1"
        if "resourceFieldRef" in source:
            source["resourceFieldRef"]["divisor"] = "0"
    kube.patch("deployments", NS, "mesh-pod-onnx-rt", {"spec": stored["spec"]})
    defaulted = kube.get("deployments", NS, "mesh-pod-onnx-rt")
    assert defaulted is not None

    pools.reconcile()

    after = kube.get("deployments", NS, "mesh-pod-onnx-rt")
    assert after is not None
    assert after["metadata"]["resourceVersion"] == defaulted["metadata"]["resourceVersion"]


def test_a_scale_down_that_is_not_written_withdraws_its_mark(
    kube: FakeKubeAPI, pools: Pools, mesh: FakeMesh
) -> None:
    # The pod chosen for removal is marked before the scale is written; when the write fails
    # (409: someone scaled meanwhile), a mark left behind would make the ReplicaSet remove that
    # pod at some later scale-down, whatever it holds by then.
    kube.create("servingruntimes", runtime("onnx-rt", "onnx"))
    pools.reconcile()
    kube.patch("deployments", NS, "mesh-pod-onnx-rt", {"spec": {"replicas": 2}})
    for name in ("mesh-pod-onnx-rt-hot", "mesh-pod-onnx-rt-idle"):
        kube.create("pods", {"metadata": {"name": name, "namespace": NS}, "spec": {}})
    mesh.pool_view = PoolsView(
        {"onnx-rt": [pod("mesh-pod-onnx-rt-hot", GiB, ("a", GiB // 8)),
                     pod("mesh-pod-onnx-rt-idle", GiB)]},
        now=1000.0,
    )  # fmt: skip
    kube.fail_next("PUT", r"/mesh-pod-onnx-rt/scale$", 409)

    pools.reconcile()

    assert kube.fired and kube.fired[0].code == 409
    idle = kube.get("pods", NS, "mesh-pod-onnx-rt-idle") or {}
    annotations = idle.get("metadata", {}).get("annotations") or {}
    assert "controller.kubernetes.io/pod-deletion-cost" not in annotations
    assert kube.get("deployments", NS, "mesh-pod-onnx-rt")["spec"]["replicas"] == 2  # type: ignore[index]


def test_a_runtime_switched_off_takes_its_pool_down(kube: FakeKubeAPI, pools: Pools) -> None:
    # `disabled: true` (or `multiModel: false`) means no pool (docs/kubernetes.md); a pool made
    # while the runtime served used to keep its pods running, unmanaged, for good.
    kube.create("servingruntimes", runtime("onnx-rt", "onnx"))
    pools.reconcile()
    assert kube.get("deployments", NS, "mesh-pod-onnx-rt")["spec"]["replicas"] == 1  # type: ignore[index]

    kube.patch("servingruntimes", NS, "onnx-rt", {"spec": {"disabled": True}})
    pools.reconcile()
    assert kube.get("deployments", NS, "mesh-pod-onnx-rt")["spec"]["replicas"] == 0  # type: ignore[index]

    kube.patch("servingruntimes", NS, "onnx-rt", {"spec": {"disabled": False}})
    pools.reconcile()
    assert kube.get("deployments", NS, "mesh-pod-onnx-rt")["spec"]["replicas"] == 1  # type: ignore[index]


def test_one_runtime_of_an_odd_shape_stops_no_other_pool(kube: FakeKubeAPI, pools: Pools) -> None:
    # The CRD keeps a container's fields as written: `resources` can be anything. Such a
    # runtime crashed the listing of every runtime, so no pool was reconciled at all (and a
    # controller that had not listed them yet failed every Predictor's reconcile).
    odd = runtime("odd-rt", "onnx")
    odd["spec"]["containers"][0]["resources"] = "lots"
    kube.create("servingruntimes", odd)
    kube.create("servingruntimes", runtime("onnx-rt", "onnx"))

    pools.reconcile()

    assert [d["metadata"]["name"] for d in kube.objects("deployments", NS)] == ["mesh-pod-onnx-rt"]
    events = kube.objects("events", NS)
    assert [(e["reason"], e["involvedObject"]["name"]) for e in events] == [
        ("InvalidRuntime", "odd-rt")
    ]
    assert "resources" in events[0]["message"]


def test_a_pool_of_gpu_pods_takes_the_models_that_require_a_gpu(
    kube: FakeKubeAPI, pools: Pools, mesh: FakeMesh
) -> None:
    # `gpu: required` places a model only on pods labelled gpu=true (the GPU overlay labels
    # its pods); a pool whose runtime asks for GPUs must carry the label too, or such a model,
    # registered with the labels {gpu: true, pool: <runtime>}, could never be placed.
    from tests.controller.conftest import build_controller, predictor

    gpus = {"limits": {"nvidia.com/gpu": "1", "memory": "16Gi"}}
    kube.create("servingruntimes", runtime("onnx-gpu", "onnx", containers=[
        {"name": "server", "image": "example/server:1", "resources": gpus}]))  # fmt: skip
    kube.create("servingruntimes", runtime("onnx-rt", "onnx"))
    pools.reconcile()

    def args(name: str) -> list[str]:
        deployment = kube.get("deployments", NS, name)
        assert deployment is not None
        return list(deployment["spec"]["template"]["spec"]["containers"][0]["args"])

    assert "--label=gpu=true" in args("mesh-pod-onnx-gpu")
    assert "--label=gpu=true" not in args("mesh-pod-onnx-rt")

    created = kube.create(
        "predictors",
        predictor("fraud", "onnx", "mlp", runtime={"name": "onnx-gpu"}, gpu="required"),
    )
    controller = build_controller(kube, mesh, pools=True)
    controller._observe("ADDED", created)
    controller.process("fraud")
    (spec,) = mesh.models.values()
    assert spec.required_labels == {"gpu": "true", "pool": "onnx-gpu"}


def runtime_status(kube: FakeKubeAPI, name: str = "onnx-rt") -> dict[str, Any]:
    return dict((kube.get("servingruntimes", NS, name) or {}).get("status") or {})


def ready_condition(kube: FakeKubeAPI, name: str = "onnx-rt") -> dict[str, Any]:
    conditions = runtime_status(kube, name).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Ready"), {})


def test_a_serving_runtime_shows_its_pools_pods_and_readiness(
    kube: FakeKubeAPI, pools: Pools, mesh: FakeMesh
) -> None:
    # `kubectl get servingruntime` shows the pool: desired and ready pods, and a Ready
    # condition that says what the pool waits for.
    created = kube.create("servingruntimes", runtime("onnx-rt", "onnx"))
    pools.reconcile()

    status = runtime_status(kube)
    assert status["deploymentName"] == "mesh-pod-onnx-rt"
    assert (status["replicas"], status["readyReplicas"]) == (1, 0)
    assert status["observedGeneration"] == created["metadata"]["generation"]
    starting = ready_condition(kube)
    assert (starting["status"], starting["reason"]) == ("False", "PodsStarting")
    assert starting["message"] == "0 of 1 pods ready"

    # The pod runs (the kubelet writes the Deployment's status): the runtime is Ready.
    kube.patch("deployments", NS, "mesh-pod-onnx-rt", {"status": {
        "replicas": 1, "readyReplicas": 1, "availableReplicas": 1}}, subresource="status")  # fmt: skip
    mesh.pool_view = PoolsView({"onnx-rt": [pod("p0", GiB)]}, now=1000.0)
    pools.reconcile()
    status = runtime_status(kube)
    assert (status["replicas"], status["readyReplicas"]) == (1, 1)
    ready = ready_condition(kube)
    assert (ready["status"], ready["reason"]) == ("True", "PodsReady")
    assert ready["lastTransitionTime"] >= starting["lastTransitionTime"]

    # Nothing changed: no write.
    kube.reset_requests()
    pools.reconcile()
    assert not [r for r in kube.requests if r.method == "PATCH" and "/servingruntimes/" in r.path]

    # Switched off: no pods, and the condition says why.
    kube.patch("servingruntimes", NS, "onnx-rt", {"spec": {"disabled": True}})
    pools.reconcile()
    status = runtime_status(kube)
    assert status["replicas"] == 0
    off = ready_condition(kube)
    assert (off["status"], off["reason"]) == ("False", "Disabled")


def test_a_pool_at_zero_is_ready_and_runtimes_not_the_meshs_get_no_status(
    kube: FakeKubeAPI, pools: Pools
) -> None:
    kube.create("servingruntimes", runtime("onnx-rt", "onnx", annotations={
        "mesh.serving.kserve.io/min-pods": "0"}))  # fmt: skip
    kube.create("servingruntimes", runtime("single", "onnx", multiModel=False))  # KServe's
    kube.create("servingruntimes", runtime("sk", "sklearn"))
    kube.create("servingruntimes", runtime("bad", "onnx", annotations={
        "mesh.serving.kserve.io/max-pods": "lots"}))  # fmt: skip

    pools.reconcile()

    at_zero = ready_condition(kube)
    assert (at_zero["status"], at_zero["reason"]) == ("True", "ScaledToZero")
    assert runtime_status(kube)["replicas"] == 0
    assert runtime_status(kube, "single") == {}
    unserved = ready_condition(kube, "sk")
    assert (unserved["status"], unserved["reason"]) == ("False", "NoSupportedFormat")
    assert "sklearn" in unserved["message"]
    bad = ready_condition(kube, "bad")
    assert (bad["status"], bad["reason"]) == ("False", "InvalidRuntime")
    assert "'lots'" in bad["message"]


def test_a_status_the_crd_prunes_is_written_once_not_every_round(mesh: FakeMesh) -> None:
    # KServe's own ServingRuntime CRD declares an empty status: the API server prunes every
    # field the controller writes. The condition's lastTransitionTime, found nowhere in what
    # was stored, was stamped anew each round, and the status written every --pool-interval.
    kserves = dataclasses.replace(SERVING_RUNTIMES, status_fields=frozenset())
    resources = tuple(kserves if r == SERVING_RUNTIMES else r for r in POOL_RESOURCES)
    now = [1000.0]

    def clock() -> float:
        now[0] += 60.0  # every round a minute later
        return now[0]

    with FakeKubeAPI(resources) as kube:
        client = kube.client()
        settings = PoolSettings(min_pods=1, max_pods=4, template=PodTemplate(image="mesh:test"))
        pools = Pools(PoolApi(client, NS), mesh, settings, clock=clock)  # type: ignore[arg-type]
        kube.create("servingruntimes", runtime("onnx-rt", "onnx"))
        writes = []
        for _ in range(4):
            pools.reconcile()
            stored = kube.get("servingruntimes", NS, "onnx-rt")
            assert stored is not None and "conditions" not in (stored.get("status") or {})
            writes.append(sum(
                r.method == "PATCH" and r.path.endswith("/servingruntimes/onnx-rt/status")
                for r in kube.requests
            ))  # fmt: skip
        client.close()
    assert writes == [1, 1, 1, 1]  # sent in the first round, then never again
