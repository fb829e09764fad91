"""Which models a draining pod must see loaded elsewhere, and in what order."""

from __future__ import annotations

from mesh.cluster.records import PlacementState
from mesh.placement.handoff import plan_handoff
from mesh.placement.snapshot import HeldModel, ModelRequirements, PodView, Snapshot


def held(
    model_id: str, last_used: float, state: PlacementState = PlacementState.LOADED
) -> HeldModel:
    return HeldModel(model_id, 1 << 20, last_used, 0, state)


def registered(*ids: str) -> dict[str, ModelRequirements]:
    return {m: ModelRequirements(m) for m in ids}


def test_most_recently_used_first_across_draining_pods() -> None:
    a = PodView("a", 1 << 30, draining=True, models={"m1": held("m1", 10), "m2": held("m2", 30)})
    b = PodView("b", 1 << 30, draining=True, models={"m3": held("m3", 20), "m1": held("m1", 40)})
    c = PodView("c", 1 << 30)
    # m1's last use is the later of its two copies'.
    assert plan_handoff(Snapshot((a, b, c), registered("m1", "m2", "m3"))) == ["m1", "m2", "m3"]


def test_a_copy_on_a_live_pod_that_stays_needs_nothing() -> None:
    going = PodView("a", 1 << 30, draining=True, models={"m1": held("m1", 10), "m2": held("m2", 9)})
    staying = PodView("b", 1 << 30, models={"m1": held("m1", 5)})
    loading = PodView("c", 1 << 30, models={"m2": held("m2", 0, PlacementState.LOADING)})
    assert plan_handoff(Snapshot((going, staying), registered("m1", "m2"))) == ["m2"]
    # A copy already on its way counts: asking again would load a third.
    assert plan_handoff(Snapshot((going, staying, loading), registered("m1", "m2"))) == []


def test_copies_on_dead_or_draining_pods_do_not_count() -> None:
    going = PodView("a", 1 << 30, draining=True, models={"m": held("m", 10)})
    dead = PodView("b", 1 << 30, alive=False, models={"m": held("m", 10)})
    also_going = PodView("c", 1 << 30, draining=True, models={"m": held("m", 1)})
    assert plan_handoff(Snapshot((going, dead, also_going), registered("m"))) == ["m"]


def test_unregistered_and_still_loading_models_are_left() -> None:
    going = PodView(
        "a", 1 << 30, draining=True,
        models={"gone": held("gone", 50), "half": held("half", 60, PlacementState.LOADING),
                "m": held("m", 1)},
    )  # fmt: skip
    assert plan_handoff(Snapshot((going,), registered("half", "m"))) == ["m"]


def test_nothing_drains_nothing_to_do() -> None:
    pod = PodView("a", 1 << 30, models={"m": held("m", 1)})
    assert plan_handoff(Snapshot((pod,), registered("m"))) == []


def test_the_order_is_by_last_use_not_by_name() -> None:
    going = PodView(
        "a",
        1 << 30,
        draining=True,
        models={"a-old": held("a-old", 0.0), "z-hot": held("z-hot", 0.5)},
    )
    assert plan_handoff(Snapshot((going, PodView("b", 1 << 30)), registered("a-old", "z-hot"))) == [
        "z-hot",
        "a-old",
    ]


def test_a_model_on_two_draining_pods_counts_its_latest_use_wherever_it_is_listed() -> None:
    first = PodView("a", 1 << 30, draining=True, models={"m1": held("m1", 40)})
    second = PodView(
        "b", 1 << 30, draining=True, models={"m1": held("m1", 10), "m2": held("m2", 20)}
    )
    staying = PodView("c", 1 << 30)  # listed first: pods that stay are passed over, not a stop
    assert plan_handoff(Snapshot((staying, first, second), registered("m1", "m2"))) == ["m1", "m2"]
