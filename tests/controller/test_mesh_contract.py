"""The contract of the controller's view of the mesh (mesh.controller.meshapi.MeshApi), run on
the FakeMesh the Kubernetes-side tests use and on MeshApi against a real router and etcd: the
fake must answer the way the controller relies on the management API to answer.

What the controller relies on: a registered model is listed and has a status (None before);
registering the same spec again is accepted; unregister says whether the model existed; a
vmodel points at a registered model (one that is not registered is refused) and reports its
target at once; delete says whether it existed; nothing unknown raises.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from mesh.controller.meshapi import MeshApi
from mesh.controller.predictor import PredictorSpec
from mesh.errors import ModelNotFound
from mesh.storageref import StorageRef
from tests.cluster.etcd_server import EtcdServer
from tests.controller.fakemesh import FakeMesh
from tests.helpers import running_router

STATES = {"LOADED", "LOADING", "FAILED", "NOT_LOADED"}
TRANSITIONS = {"UP_TO_DATE", "IN_PROGRESS", "BLOCKED_BY_FAILED_LOAD"}


def spec(model_id: str) -> PredictorSpec:
    return PredictorSpec("p", "ml", model_id, "onnx", StorageRef("", "mlp"))


@pytest.fixture(params=["fake", "router"])
def mesh(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "fake":
        yield FakeMesh()
        return
    etcd: EtcdServer = request.getfixturevalue("etcd")
    prefix: str = request.getfixturevalue("prefix")
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        api = MeshApi(router.address, timeout=10)
        yield api
        api.close()


def test_a_registered_model_is_listed_with_a_status(mesh: Any) -> None:
    assert mesh.model("m-1") is None
    assert "m-1" not in mesh.model_ids()
    mesh.register(spec("m-1"))
    mesh.register(spec("m-1"))  # the same spec again: accepted
    assert "m-1" in mesh.model_ids()
    view = mesh.model("m-1")
    assert view is not None and view.model_id == "m-1" and view.state in STATES


def test_unregister_says_whether_the_model_existed(mesh: Any) -> None:
    mesh.register(spec("m-2"))
    assert mesh.unregister("m-2") is True
    assert mesh.unregister("m-2") is False
    assert mesh.model("m-2") is None
    assert "m-2" not in mesh.model_ids()


def test_a_vmodel_points_at_a_registered_model(mesh: Any) -> None:
    assert mesh.vmodel("v") is None
    with pytest.raises(ModelNotFound, match="not-registered"):
        mesh.set_vmodel("v", "not-registered")
    assert mesh.vmodel("v") is None
    mesh.register(spec("m-3"))
    mesh.set_vmodel("v", "m-3")
    view = mesh.vmodel("v")
    assert view is not None and view.target == "m-3" and view.transition in TRANSITIONS
    assert mesh.delete_vmodel("v") is True
    assert mesh.delete_vmodel("v") is False
    assert mesh.vmodel("v") is None
