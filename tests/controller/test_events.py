"""Kubernetes Events: what `kubectl describe predictor` and `kubectl get events` show.

Recorded through the official client on the test API server (tests/kube), from a controller
over a real router and real pods (loaded, failed with the reason, transition done), and on a
pod that drains (from the mesh's view, the FakeMesh: no pod needs to stop for it)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from mesh.controller.controller import Controller
from mesh.controller.meshapi import MeshApi
from mesh.controller.predictor import events
from tests.controller.conftest import NAMESPACE, build_controller, predictor
from tests.controller.fakemesh import FakeMesh
from tests.controller.test_controller import router  # noqa: F401  (a router over real pods)
from tests.helpers import RunningRouter, wait_until
from tests.kube.apiserver import FakeKubeAPI


def events_on(kube: FakeKubeAPI, kind: str, name: str) -> list[dict[str, Any]]:
    return [
        e for e in kube.objects("events", NAMESPACE)
        if e["involvedObject"]["kind"] == kind and e["involvedObject"]["name"] == name
    ]  # fmt: skip


def reasons(kube: FakeKubeAPI, kind: str, name: str) -> list[str]:
    return [e["reason"] for e in events_on(kube, kind, name)]


@pytest.fixture
def controller(kube: FakeKubeAPI, router: RunningRouter) -> Iterator[Controller]:  # noqa: F811
    mesh = MeshApi(router.address, timeout=10)
    controller = build_controller(kube, mesh, events=True)
    controller.start()
    yield controller
    controller.stop()
    mesh.close()


@pytest.mark.slow
def test_predictors_get_events_for_loaded_failed_and_transition_done(
    kube: FakeKubeAPI, controller: Controller
) -> None:
    kube.create("predictors", predictor("fraud", "onnx", "mlp"))
    wait_until(lambda: "Loaded" in reasons(kube, "Predictor", "fraud"), what="a Loaded event")
    (loaded,) = events_on(kube, "Predictor", "fraud")
    assert loaded["type"] == "Normal"
    assert loaded["source"]["component"] == "mesh-controller"
    uid = kube.get("predictors", NAMESPACE, "fraud")["metadata"]["uid"]
    assert loaded["involvedObject"]["uid"] == uid
    assert loaded["involvedObject"]["apiVersion"] == "serving.kserve.io/v1alpha1"

    kube.create("predictors", predictor("broken", "onnx", "corrupt"))
    wait_until(lambda: "FailedToLoad" in reasons(kube, "Predictor", "broken"),
               what="a FailedToLoad event")  # fmt: skip
    (failed,) = [e for e in events_on(kube, "Predictor", "broken") if e["reason"] == "FailedToLoad"]
    assert failed["type"] == "Warning"
    assert "ModelLoadFailed" in failed["message"] and "broken-" in failed["message"]
    assert "Loaded" not in reasons(kube, "Predictor", "broken")

    # A spec change: the new model loads, clients switch, the transition is reported done.
    kube.patch("predictors", NAMESPACE, "fraud", {"spec": {"path": "identity"}})
    wait_until(lambda: "TransitionDone" in reasons(kube, "Predictor", "fraud"),
               what="a TransitionDone event")  # fmt: skip
    # A resync that finds nothing new records nothing more.
    count = len(kube.objects("events", NAMESPACE))
    controller.process("fraud")
    assert len(kube.objects("events", NAMESPACE)) == count


class CountingMesh(FakeMesh):
    looks = 0

    def draining_pods(self) -> dict[str, int]:
        self.looks += 1
        return super().draining_pods()


def test_a_draining_pod_gets_one_event(kube: FakeKubeAPI) -> None:
    mesh = CountingMesh()
    controller = build_controller(kube, mesh, events=True, drain_poll=0.05)
    controller.start()
    try:
        mesh.draining["pod-3"] = 7
        wait_until(lambda: events_on(kube, "Pod", "pod-3"), what="a Draining event")
        (event,) = events_on(kube, "Pod", "pod-3")
        assert event["reason"] == "Draining" and "7 models" in event["message"]
        # Still draining at the next looks: still one Event.
        seen = mesh.looks
        wait_until(lambda: mesh.looks > seen + 3, what="three more looks")
        assert len(events_on(kube, "Pod", "pod-3")) == 1
        # A pod that drains again after it came back is reported again.
        del mesh.draining["pod-3"]
        seen = mesh.looks
        wait_until(lambda: mesh.looks > seen + 1, what="a look without it")
        mesh.draining["pod-3"] = 2
        wait_until(lambda: len(events_on(kube, "Pod", "pod-3")) == 2, what="a second Event")
    finally:
        controller.stop()


def test_events_follow_status_changes_only() -> None:
    loading = {"activeModelState": "Loading", "transitionStatus": "UpToDate", "totalCopies": 0}
    loaded = {**loading, "activeModelState": "Loaded", "totalCopies": 2}
    assert [(e.type, e.reason) for e in events(loading, loaded)] == [("Normal", "Loaded")]
    assert events(loaded, loaded) == []
    failure = {"reason": "ModelLoadFailed", "message": "no such file", "location": "pod-1",
               "modelId": "m-1", "time": "2026-01-01T00:00:00Z"}  # fmt: skip
    failed = {**loading, "activeModelState": "FailedToLoad", "lastFailureInfo": failure}
    (event,) = events(loading, failed)
    assert (event.type, event.reason) == ("Warning", "FailedToLoad")
    assert event.message == "m-1 on pod-1: ModelLoadFailed: no such file"
    assert events(failed, failed) == []
    moving = {**loaded, "transitionStatus": "InProgress", "targetModelState": "Loading"}
    blocked = {
        **moving,
        "transitionStatus": "BlockedByFailedLoad",
        "targetModelState": "FailedToLoad",
    }
    assert [e.reason for e in events(moving, blocked)] == ["TransitionBlocked"]
    invalid = {"transitionStatus": "InvalidSpec", "lastFailureInfo": {"message": "bad path"}}
    assert [(e.reason, e.message) for e in events(loaded, invalid)] == [("InvalidSpec", "bad path")]
