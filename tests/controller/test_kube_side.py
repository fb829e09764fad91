"""The controller against the Kubernetes API misbehaving: dropped and expired watches,
conflicts, failures, and two replicas electing one leader. The mesh side is in memory here;
test_controller.py runs the real one."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from mesh.controller.controller import Controller, WorkQueue
from mesh.controller.kube import FINALIZER
from tests.controller.conftest import NAMESPACE, build_controller, predictor
from tests.controller.fakemesh import FakeMesh
from tests.helpers import wait_until
from tests.kube.apiserver import FakeKubeAPI

PREDICTORS = rf"/namespaces/{NAMESPACE}/predictors$"


def reconciled(kube: FakeKubeAPI, name: str) -> bool:
    obj = kube.get("predictors", NAMESPACE, name) or {}
    return bool((obj.get("status") or {}).get("activeModelState") == "Loaded")


def start(
    kube: FakeKubeAPI, mesh: FakeMesh, identity: str | None = None, **policy: Any
) -> tuple[Controller, CollectorRegistry]:
    registry = CollectorRegistry()
    controller = build_controller(kube, mesh, identity, registry, **policy)
    controller.start()
    return controller, registry


@pytest.fixture
def mesh() -> FakeMesh:
    return FakeMesh()


@pytest.fixture
def running(kube: FakeKubeAPI, mesh: FakeMesh) -> Iterator[tuple[Controller, CollectorRegistry]]:
    controller, registry = start(kube, mesh)
    wait_until(controller.synced.is_set)
    kube.wait_for_watches(1)
    yield controller, registry
    controller.stop()


def test_a_dropped_watch_resumes_and_misses_nothing(
    kube: FakeKubeAPI, mesh: FakeMesh, running: tuple[Controller, CollectorRegistry]
) -> None:
    kube.create("predictors", predictor("before", "onnx", "a"))
    wait_until(lambda: reconciled(kube, "before"))
    kube.drop_watches()  # an API server restart, a network cut
    kube.create("predictors", predictor("after", "onnx", "b"))
    wait_until(lambda: reconciled(kube, "after"), what="the Predictor created after the cut")
    assert mesh.vmodels.keys() == {"before", "after"}


def test_an_expired_watch_lists_again(
    kube: FakeKubeAPI, mesh: FakeMesh, running: tuple[Controller, CollectorRegistry]
) -> None:
    _, registry = running
    kube.fail_next("GET", PREDICTORS, 500, times=2, watch=True)  # keeps it away a while
    kube.drop_watches()
    kube.create("predictors", predictor("meanwhile", "xgboost", "x"))
    kube.compact()  # the watch's resourceVersion is now too old: 410 Gone
    wait_until(lambda: reconciled(kube, "meanwhile"), what="the relist to find it")
    assert [(f.method, f.code, f.watch) for f in kube.fired] == [("GET", 500, True)] * 2
    gone = registry.get_sample_value("mesh_controller_watch_restarts_total", {"reason": "gone"})
    assert gone is not None and gone >= 1


def test_a_conflict_on_a_write_is_retried_with_the_newer_object(
    kube: FakeKubeAPI, mesh: FakeMesh, running: tuple[Controller, CollectorRegistry]
) -> None:
    _, registry = running
    kube.fail_next("PATCH", r"/predictors/racy$", 409)  # the finalizer write loses a race
    kube.fail_next("PATCH", r"/predictors/racy/status$", 409)
    kube.create("predictors", predictor("racy", "onnx", "a"))
    wait_until(lambda: reconciled(kube, "racy"))
    assert FINALIZER in kube.get("predictors", NAMESPACE, "racy")["metadata"]["finalizers"]
    assert [(f.method, f.path.rsplit("/", 2)[-2:], f.code) for f in kube.fired] == [
        ("PATCH", ["predictors", "racy"], 409),
        ("PATCH", ["racy", "status"], 409),
    ]
    conflicts = registry.get_sample_value(
        "mesh_controller_reconciles_total", {"result": "conflict"}
    )
    assert conflicts == 2


def test_an_api_server_error_backs_off_and_recovers(
    kube: FakeKubeAPI, mesh: FakeMesh, running: tuple[Controller, CollectorRegistry]
) -> None:
    _, registry = running
    kube.fail_next("PATCH", r"/predictors/flaky/status$", 500, times=2)
    kube.create("predictors", predictor("flaky", "onnx", "a"))
    wait_until(lambda: reconciled(kube, "flaky"))
    # Both failures were answered (and counted as errors), then the third write went through.
    assert [(f.method, f.code) for f in kube.fired] == [("PATCH", 500)] * 2
    assert kube.unfired() == []
    errors = registry.get_sample_value("mesh_controller_reconciles_total", {"result": "error"})
    assert errors == 2


def test_deletion_unregisters_then_releases_the_finalizer(
    kube: FakeKubeAPI, mesh: FakeMesh, running: tuple[Controller, CollectorRegistry]
) -> None:
    kube.create("predictors", predictor("short", "onnx", "a"))
    wait_until(lambda: reconciled(kube, "short"))
    (model_id,) = mesh.models
    kube.delete("predictors", NAMESPACE, "short")
    wait_until(lambda: kube.get("predictors", NAMESPACE, "short") is None)
    assert ("delete_vmodel", "short") in mesh.calls
    assert ("unregister", model_id) in mesh.calls
    assert not mesh.models and not mesh.vmodels


def test_a_predictor_of_another_namespace_is_not_ours(
    kube: FakeKubeAPI, mesh: FakeMesh, running: tuple[Controller, CollectorRegistry]
) -> None:
    other = predictor("elsewhere", "onnx", "a")
    other["metadata"]["namespace"] = "other-team"
    kube.create("predictors", other)
    kube.create("predictors", predictor("here", "onnx", "a"))
    wait_until(lambda: reconciled(kube, "here"))
    assert "elsewhere" not in mesh.vmodels
    assert "status" not in kube.get("predictors", "other-team", "elsewhere")


def test_two_replicas_one_leader_and_a_takeover(kube: FakeKubeAPI, mesh: FakeMesh) -> None:
    a, _ = start(kube, mesh, identity="replica-a")
    b, _ = start(kube, mesh, identity="replica-b")
    try:
        leader = wait_until(lambda: [c for c in (a, b) if c.is_leader], what="a leader")
        time.sleep(1.0)
        assert [c for c in (a, b) if c.is_leader] == leader  # one, and it stays one
        (first,) = leader
        kube.create("predictors", predictor("p1", "onnx", "a"))
        wait_until(lambda: reconciled(kube, "p1"))
        first.stop()  # releases the Lease
        second = b if first is a else a
        wait_until(lambda: second.is_leader, what="the standby to take over")
        kube.create("predictors", predictor("p2", "onnx", "a"))
        wait_until(lambda: reconciled(kube, "p2"))
        lease = kube.get("leases", NAMESPACE, "mesh-controller")
        assert lease["spec"]["holderIdentity"] == second._lock.identity  # type: ignore[union-attr]
    finally:
        a.stop()
        b.stop()


def test_a_crashed_leader_is_replaced_after_its_lease_runs_out(
    kube: FakeKubeAPI, mesh: FakeMesh
) -> None:
    a, _ = start(kube, mesh, identity="replica-a")
    wait_until(lambda: a.is_leader)
    a._stop.set()  # dies without releasing the Lease: no renewals from now on
    a.queue.close()
    b, _ = start(kube, mesh, identity="replica-b")
    try:
        time.sleep(1.0)
        assert not b.is_leader  # the Lease still stands
        wait_until(lambda: b.is_leader, timeout=10, what="the Lease to run out")
    finally:
        b.stop()


def test_the_work_queue_holds_a_key_once_and_honours_delays() -> None:
    queue = WorkQueue()
    queue.add("later", after=0.3)
    queue.add("now")
    queue.add("now")
    queue.add("later", after=5)  # already due sooner: kept at 0.3 s
    assert len(queue) == 2
    assert queue.get(timeout=1) == "now"
    assert queue.get(timeout=0.05) is None
    assert queue.get(timeout=1) == "later"
    queue.close()
    assert queue.get() is None
