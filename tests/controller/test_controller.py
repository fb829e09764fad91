"""The controller end to end: a fake Kubernetes API server, real etcd, a real router and pods."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from mesh.cluster.etcd import EtcdConfig, EtcdStore
from mesh.controller.controller import Controller
from mesh.controller.kube import FINALIZER
from mesh.controller.meshapi import MeshApi
from mesh.gen import management_pb2 as mpb
from tests.cluster.etcd_server import EtcdServer
from tests.controller.conftest import NAMESPACE, build_controller, predictor
from tests.helpers import (
    RunningPod,
    RunningRouter,
    infer_request,
    output_array,
    running_router,
    wait_until,
)
from tests.kube.apiserver import FakeKubeAPI

pytestmark = pytest.mark.slow  # real etcd, router and pods: the quick subset skips it

X = np.ones((1, 64), np.float32)


def wipe(etcd: EtcdServer, prefix: str) -> None:
    async def delete() -> None:
        store = EtcdStore(EtcdConfig.parse(etcd.url))
        try:
            await store.delete_prefix(prefix + "models/")
            await store.delete_prefix(prefix + "vmodels/")
        finally:
            await store.aclose()

    asyncio.run(delete())


def status_of(kube: FakeKubeAPI, name: str) -> dict[str, Any]:
    obj = kube.get("predictors", NAMESPACE, name)
    return (obj or {}).get("status") or {}


@pytest.fixture
def router(etcd: EtcdServer, prefix: str, pods: list[RunningPod]) -> Iterator[RunningRouter]:
    with running_router(etcd=etcd.url, etcd_prefix=prefix, leader_interval=0.3) as r:
        yield r


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def controller(
    kube: FakeKubeAPI, router: RunningRouter, registry: CollectorRegistry
) -> Iterator[Controller]:
    mesh = MeshApi(router.address, timeout=10)
    controller = build_controller(kube, mesh, registry=registry)
    controller.start()
    yield controller
    controller.stop()
    mesh.close()


def test_a_predictor_is_registered_served_and_reports_loaded(
    kube: FakeKubeAPI, router: RunningRouter, controller: Controller
) -> None:
    kube.create("predictors", predictor("fraud", "onnx", "mlp"))
    status = wait_until(lambda: status_of(kube, "fraud").get("activeModelState") == "Loaded"
                        and status_of(kube, "fraud"), what="Loaded")  # fmt: skip
    assert status["available"] is True
    assert status["transitionStatus"] == "UpToDate"
    assert status["targetModelState"] == ""
    assert status["totalCopies"] >= 1
    assert status["failedCopies"] == 0
    assert status["grpcEndpoint"] == "grpc://mesh-router.ml:8033"
    assert "lastFailureInfo" not in status
    obj = kube.get("predictors", NAMESPACE, "fraud")
    assert FINALIZER in obj["metadata"]["finalizers"]
    # Clients ask for the Predictor's name.
    response = router.v2.ModelInfer(infer_request("fraud", input=X))
    assert output_array(response, response.outputs[0].name).shape[0] == 1


def test_status_is_written_only_when_it_changes(
    kube: FakeKubeAPI, router: RunningRouter, controller: Controller, registry: CollectorRegistry
) -> None:
    kube.create("predictors", predictor("steady", "xgboost", "xgb"))
    wait_until(
        lambda: (
            status_of(kube, "steady").get("activeModelState") == "Loaded"
            and status_of(kube, "steady").get("transitionStatus") == "UpToDate"
        ),
        what="the final status",
    )

    def reconciles() -> float:
        return registry.get_sample_value("mesh_controller_reconciles_total", {"result": "ok"}) or 0

    kube.reset_requests()
    before = reconciles()
    # Three resyncs (1 s apart): each reconciles the Predictor, none changes anything.
    wait_until(lambda: reconciles() >= before + 3, what="three resyncs")
    writes = [r for r in kube.requests if r.method == "PATCH" and r.path.endswith("/status")]
    assert writes == []


def test_a_spec_change_moves_clients_with_no_failed_request(
    kube: FakeKubeAPI, router: RunningRouter, controller: Controller
) -> None:
    from tests.router.test_faults import Load

    kube.create("predictors", predictor("scorer", "onnx", "mlp"))
    wait_until(lambda: status_of(kube, "scorer").get("activeModelState") == "Loaded")
    first = router.management.GetVModelStatus(mpb.GetVModelStatusRequest(vmodel_id="scorer"))
    with Load(router, {"scorer": {"input": X}}) as load:
        wait_until(lambda: load.ok["scorer"] > 0, what="requests before the change")
        kube.patch("predictors", NAMESPACE, "scorer",
                   {"spec": {"modelType": {"name": "onnx", "version": "2"}}})  # fmt: skip

        def switched() -> bool:
            v = router.management.GetVModelStatus(mpb.GetVModelStatusRequest(vmodel_id="scorer"))
            return v.active_model_id != first.active_model_id and v.transition == "UP_TO_DATE"

        wait_until(switched, what="the vmodel to switch")
        after = load.ok["scorer"]
        wait_until(lambda: load.ok["scorer"] > after, what="requests after the switch")
    assert load.failed["scorer"] == []
    wait_until(lambda: status_of(kube, "scorer").get("transitionStatus") == "UpToDate"
               and status_of(kube, "scorer").get("activeModelState") == "Loaded")  # fmt: skip

    # The replaced model is unregistered once nothing points to it.
    def old_gone() -> bool:
        listed = router.management.ListModels(mpb.ListModelsRequest()).models
        return first.active_model_id not in {m.model_id for m in listed}

    wait_until(old_gone, what="the old model to be unregistered")


def test_a_corrupt_artifact_reports_failed_to_load_with_the_reason(
    kube: FakeKubeAPI, router: RunningRouter, controller: Controller
) -> None:
    kube.create("predictors", predictor("broken", "onnx", "corrupt"))
    status = wait_until(lambda: status_of(kube, "broken").get("activeModelState") == "FailedToLoad"
                        and status_of(kube, "broken"), what="FailedToLoad")  # fmt: skip
    failure = status["lastFailureInfo"]
    assert failure["reason"] == "ModelLoadFailed"
    assert failure["modelId"].startswith("broken-")
    assert "onnx" in failure["message"].lower() or "protobuf" in failure["message"].lower()
    assert status["available"] is False


def test_an_invalid_spec_says_why_and_registers_nothing(
    kube: FakeKubeAPI, router: RunningRouter, controller: Controller
) -> None:
    kube.create("predictors", predictor("odd", "tensorflow", "saved"))
    status = wait_until(lambda: status_of(kube, "odd").get("transitionStatus"), what="status")
    assert status == "InvalidSpec" or status_of(kube, "odd")["transitionStatus"] == "InvalidSpec"
    info = status_of(kube, "odd")["lastFailureInfo"]
    assert info["reason"] == "NoSupportingRuntime"
    assert "tensorflow" in info["message"]
    listed = router.management.ListModels(mpb.ListModelsRequest()).models
    assert not [m for m in listed if m.model_id.startswith("odd-")]


def test_deleting_a_predictor_unregisters_it_and_lets_it_go(
    kube: FakeKubeAPI, router: RunningRouter, controller: Controller
) -> None:
    kube.create("predictors", predictor("temp", "xgboost", "xgb"))
    wait_until(lambda: status_of(kube, "temp").get("activeModelState") == "Loaded")
    kube.delete("predictors", NAMESPACE, "temp")
    wait_until(lambda: kube.get("predictors", NAMESPACE, "temp") is None, what="deletion")
    with pytest.raises(grpc.RpcError) as err:
        router.management.GetVModelStatus(mpb.GetVModelStatusRequest(vmodel_id="temp"))
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    listed = router.management.ListModels(mpb.ListModelsRequest()).models
    assert not [m for m in listed if m.model_id.startswith("temp-")]
    with pytest.raises(grpc.RpcError) as err:
        router.v2.ModelInfer(infer_request("temp", input__0=X))
    assert err.value.code() is grpc.StatusCode.NOT_FOUND


def test_etcd_wiped_everything_is_registered_again(
    kube: FakeKubeAPI, router: RunningRouter, controller: Controller, etcd: EtcdServer, prefix: str
) -> None:
    for name in ("one", "two"):
        kube.create("predictors", predictor(name, "xgboost", "xgb"))
    for name in ("one", "two"):
        wait_until(lambda n=name: status_of(kube, n).get("activeModelState") == "Loaded")
    wipe(etcd, prefix)  # etcd lost its data: no registrations, no vmodels
    wait_until(lambda: not router.management.ListModels(mpb.ListModelsRequest()).models)

    def served(name: str) -> bool:
        try:
            router.v2.ModelInfer(infer_request(name, input__0=X), timeout=10)
        except grpc.RpcError:
            return False
        return True

    for name in ("one", "two"):  # within a resync or two, with no manual step
        wait_until(lambda n=name: served(n), timeout=30, what=f"{name} served again")
