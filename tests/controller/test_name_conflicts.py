"""A Predictor and an InferenceService of the same name: one name for clients, one holder.

Both kinds become a vmodel named after the resource, and clients ask for that name; two
resources cannot both be what `fraud` answers. The one that claimed the name first keeps it
(docs/kubernetes.md), the other is refused with a status that says why, and takes the name over
once the first is gone. The controllers are built by the composition root
(mesh.controller.server.build), on the fake API server, over a real router and pods.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from mesh.controller.controller import Controller
from mesh.controller.kinds import INFERENCE_SERVICE, PREDICTOR, holds_name
from mesh.controller.kube import FINALIZER
from mesh.controller.meshapi import MeshApi
from mesh.controller.server import build
from mesh.controller.settings import ControllerSettings
from mesh.gen import management_pb2 as mpb
from tests.controller.conftest import NAMESPACE, predictor
from tests.helpers import RunningPod, RunningRouter, infer_request, running_router, wait_until
from tests.kube.apiserver import FakeKubeAPI
from tests.kube.resources import DEFAULT_RESOURCES, INFERENCE_SERVICES

X = np.ones((1, 64), np.float32)


def inference_service(name: str, path: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": NAMESPACE,
                     "annotations": {"serving.kserve.io/deploymentMode": "ModelMesh"}},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "onnx"},
                                         "storage": {"path": path}}}},
    }  # fmt: skip


@pytest.fixture
def kube() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI((*DEFAULT_RESOURCES, INFERENCE_SERVICES)) as api:
        yield api


@pytest.fixture
def router(etcd: Any, prefix: str, pods: list[RunningPod]) -> Iterator[RunningRouter]:
    with running_router(etcd=etcd.url, etcd_prefix=prefix, leader_interval=0.3) as r:
        yield r


@pytest.fixture
def controllers(kube: FakeKubeAPI, router: RunningRouter) -> Iterator[list[Controller]]:
    settings = ControllerSettings(
        router=router.address, namespace=NAMESPACE, leader_election=False,
        inference_services=True, pools=False, resync=1.0, poll=0.2, watch_timeout=30,
    )  # fmt: skip
    client = kube.client()
    built: tuple[list[Controller], MeshApi] = build(settings, client)
    running, mesh = built
    for controller in running:
        controller.start()
    yield running
    for controller in running:
        controller.stop()
    mesh.close()
    client.close()


def status(kube: FakeKubeAPI, plural: str) -> dict[str, Any]:
    return dict((kube.get(plural, NAMESPACE, "fraud") or {}).get("status") or {})


def ready(kube: FakeKubeAPI) -> dict[str, Any]:
    conditions = status(kube, "inferenceservices").get("conditions") or []
    return next((c for c in conditions if c["type"] == "Ready"), {})


def storage_served(router: RunningRouter, name: str) -> str:
    """The storage path of the model the vmodel `name` points clients at."""
    vmodel = router.management.GetVModelStatus(mpb.GetVModelStatusRequest(vmodel_id=name))
    model = router.management.GetModelStatus(
        mpb.GetModelStatusRequest(model_id=vmodel.target_model_id)
    )
    return str(model.storage.path)


@pytest.mark.slow  # real etcd, router and pods
def test_the_second_of_two_kinds_with_one_name_is_refused_and_takes_over_when_the_first_goes(
    kube: FakeKubeAPI, router: RunningRouter, controllers: list[Controller]
) -> None:
    kube.create("predictors", predictor("fraud", "onnx", "mlp"))
    wait_until(lambda: status(kube, "predictors").get("activeModelState") == "Loaded")

    kube.create("inferenceservices", inference_service("fraud", "identity"))

    refused = wait_until(lambda: ready(kube).get("reason") == "NameConflict" and ready(kube),
                         what="the InferenceService refused")  # fmt: skip
    assert refused["status"] == "False"
    assert "Predictor fraud" in refused["message"], refused
    isvc = kube.get("inferenceservices", NAMESPACE, "fraud")
    assert isvc is not None and FINALIZER not in (isvc["metadata"].get("finalizers") or [])
    # Clients asking for fraud still reach the Predictor's model, and nothing else was added.
    assert storage_served(router, "fraud") == "mlp"
    router.v2.ModelInfer(infer_request("fraud", input=X), timeout=30)
    models = router.management.ListModels(mpb.ListModelsRequest()).models
    assert [m.storage.path for m in models] == ["mlp"]
    assert status(kube, "predictors")["activeModelState"] == "Loaded"

    # Deleting the refused one takes nothing from the Predictor.
    kube.delete("inferenceservices", NAMESPACE, "fraud")
    wait_until(lambda: kube.get("inferenceservices", NAMESPACE, "fraud") is None)
    kube.create("inferenceservices", inference_service("fraud", "identity"))
    wait_until(lambda: ready(kube).get("reason") == "NameConflict", what="refused again")
    assert storage_served(router, "fraud") == "mlp"
    router.v2.ModelInfer(infer_request("fraud", input=X), timeout=30)

    # The Predictor goes (its own clean-up done): the InferenceService takes the name over.
    kube.delete("predictors", NAMESPACE, "fraud")
    wait_until(lambda: ready(kube).get("status") == "True", timeout=60, what="it takes over")
    assert storage_served(router, "fraud") == "identity"
    models = router.management.ListModels(mpb.ListModelsRequest()).models
    assert [m.storage.path for m in models] == ["identity"]
    isvc = kube.get("inferenceservices", NAMESPACE, "fraud")
    assert isvc is not None and FINALIZER in isvc["metadata"]["finalizers"]


def test_an_inference_service_not_in_modelmesh_mode_sweeps_none_of_a_predictors_models(
    kube: FakeKubeAPI, router: RunningRouter, controllers: list[Controller]
) -> None:
    # KServe serves an InferenceService without the ModelMesh annotation itself; its name may
    # be a Predictor's. The InferenceService controller's sweep of orphaned models once took
    # such a name for its own and unregistered the Predictor's model between its registration
    # and the vmodel pointing at it (a spec change under way, in the Predictor's thread).
    kube.create("predictors", predictor("fraud", "onnx", "mlp"))
    wait_until(lambda: status(kube, "predictors").get("activeModelState") == "Loaded")
    serverless = inference_service("fraud", "identity")
    del serverless["metadata"]["annotations"]
    kube.create("inferenceservices", serverless)
    by_kind = {c.kind: c for c in controllers}
    isvcs = by_kind[INFERENCE_SERVICE]
    wait_until(lambda: isvcs.get("fraud") is not None, what="the InferenceService seen")
    # The Predictor's next model, registered and not yet the vmodel's target: its controller
    # is stopped here, so that only the other kind's sweep could take it away.
    by_kind[PREDICTOR].stop()
    rollout = "fraud-0123456789"
    router.management.RegisterModel(
        mpb.RegisterModelRequest(model_id=rollout, format="onnx", storage_path="identity")
    )

    isvcs.sweep()

    models = router.management.ListModels(mpb.ListModelsRequest()).models
    assert rollout in [m.model_id for m in models]
    assert "status" not in (kube.get("inferenceservices", NAMESPACE, "fraud") or {})


@pytest.mark.slow  # real etcd, router and pods
def test_without_the_inference_service_crd_predictors_are_served_all_the_same(
    router: RunningRouter,
) -> None:
    # A cluster without KServe has no InferenceService CRD: its controller cannot list (404),
    # and a Predictor must not wait on it to know who holds its name.
    with FakeKubeAPI(DEFAULT_RESOURCES) as kube:
        settings = ControllerSettings(
            router=router.address, namespace=NAMESPACE, leader_election=False,
            inference_services=True, pools=False, resync=1.0, poll=0.2, watch_timeout=30,
        )  # fmt: skip
        client = kube.client()
        running, mesh = build(settings, client)
        for controller in running:
            controller.start()
        try:
            kube.create("predictors", predictor("fraud", "onnx", "mlp"))
            wait_until(lambda: status(kube, "predictors").get("activeModelState") == "Loaded",
                       what="the Predictor served")  # fmt: skip
            assert storage_served(router, "fraud") == "mlp"
        finally:
            for controller in running:
                controller.stop()
            mesh.close()
            client.close()


def test_who_holds_a_name_the_finalizer_then_the_age_then_the_predictor() -> None:
    def obj(created: str, *finalizers: str) -> dict[str, Any]:
        meta = {"name": "fraud", "creationTimestamp": created, "finalizers": list(finalizers)}
        return {"metadata": meta}

    early, late = "2026-12-02T10:00:00Z", "2026-12-02T10:00:05Z"
    # Neither in the mesh yet: the older; created in the same second: the Predictor.
    assert holds_name(obj(early), INFERENCE_SERVICE, obj(late), PREDICTOR)
    assert not holds_name(obj(late), PREDICTOR, obj(early), INFERENCE_SERVICE)
    assert holds_name(obj(early), PREDICTOR, obj(early), INFERENCE_SERVICE)
    assert not holds_name(obj(early), INFERENCE_SERVICE, obj(early), PREDICTOR)
    # The one already in the mesh (our finalizer on it) keeps the name, whatever its age: an
    # older InferenceService switched to ModelMesh mode later takes nothing from a Predictor.
    assert holds_name(obj(late, FINALIZER), PREDICTOR, obj(early), INFERENCE_SERVICE)
    assert not holds_name(obj(early), INFERENCE_SERVICE, obj(late, FINALIZER), PREDICTOR)
    # Both there (written so before the rule): the age again.
    assert holds_name(obj(early, FINALIZER), INFERENCE_SERVICE, obj(late, FINALIZER), PREDICTOR)
