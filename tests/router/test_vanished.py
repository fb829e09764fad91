"""Which vanished pods the router still sends requests to (mesh.router.vanished, pure)."""

from __future__ import annotations

from mesh.cluster.mirror import Change
from mesh.cluster.records import InstanceRecord, PlacementRecord, PlacementState
from mesh.router.vanished import VanishedPods


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def _pod(pod_id: str, draining: bool = False) -> InstanceRecord:
    return InstanceRecord(pod_id, f"{pod_id}:1", 2**30, draining=draining)


def _copy(
    model: str, pod_id: str, state: PlacementState = PlacementState.LOADED
) -> PlacementRecord:
    return PlacementRecord(model, pod_id, state, 1.0, 10)


def _lease_expired(pod: InstanceRecord, *copies: PlacementRecord) -> list[Change]:
    changes = [Change("instance", pod.pod_id, None, pod)]
    changes += [Change("placement", f"{c.model_id}/{c.pod_id}", None, c) for c in copies]
    return changes


def test_a_pod_whose_lease_expired_keeps_its_loaded_models_for_the_grace() -> None:
    clock = Clock()
    vanished = VanishedPods(grace=10, clock=clock)
    pod = _pod("a")
    gone = vanished.observe(
        _lease_expired(pod, _copy("m", "a"), _copy("loading", "a", PlacementState.LOADING)), {}
    )
    assert gone == []
    assert vanished.holders("m") == [pod]
    assert vanished.holders("loading") == []  # only what it held loaded
    clock.now += 9.9
    assert vanished.holders("m") == [pod]
    clock.now += 0.2
    assert vanished.holders("m") == []
    assert vanished.expire() == ["a"]


def test_registering_again_or_failing_ends_the_memory() -> None:
    vanished = VanishedPods(grace=10, clock=Clock())
    vanished.observe(_lease_expired(_pod("a"), _copy("m", "a")), {})
    vanished.observe([Change("instance", "a", _pod("a"), None)], {"a": _pod("a")})
    assert vanished.holders("m") == [] and "a" not in vanished
    vanished.observe(_lease_expired(_pod("b"), _copy("m", "b")), {})
    assert vanished.drop("b") and vanished.holders("m") == []


def test_drained_pods_and_a_zero_grace_are_forgotten_at_once() -> None:
    vanished = VanishedPods(grace=10, clock=Clock())
    assert vanished.observe(_lease_expired(_pod("a", draining=True), _copy("m", "a")), {}) == ["a"]
    assert vanished.holders("m") == []
    none = VanishedPods(grace=0, clock=Clock())
    assert none.observe(_lease_expired(_pod("b"), _copy("m", "b")), {}) == ["b"]


def test_an_unload_on_a_live_pod_is_not_remembered() -> None:
    vanished = VanishedPods(grace=10, clock=Clock())
    vanished.observe(_lease_expired(_pod("a")), {})
    live = {"b": _pod("b")}
    vanished.observe([Change("placement", "m/b", None, _copy("m", "b"))], live)
    assert vanished.holders("m") == []
