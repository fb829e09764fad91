"""Copies: one more under sustained load, one fewer after a long idle spell, within the bounds."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from mesh.cluster.records import PlacementState
from mesh.placement.copies import (
    CopyAction,
    CopyPolicy,
    LoadState,
    choose_copy_to_remove,
    copy_bounds,
    decide_copies,
    live_copies,
    observe,
)
from mesh.placement.snapshot import HeldModel, ModelRequirements, PodView, Snapshot

POLICY = CopyPolicy(
    add_rate=10.0,
    add_queue=4.0,
    add_after=30.0,
    remove_rate=1.0,
    remove_queue=1.0,
    remove_after=120.0,
    half_life=5.0,
)
MODEL = ModelRequirements("m")


def run(
    state: LoadState, rate: float, copies: int, start: float, end: float, in_flight: int = 0
) -> LoadState:
    """Observe a steady `rate` (req/s) every 10 s from `start` to `end`."""
    t = start
    while t < end:
        t += 10.0
        state = observe(state, int(rate * 10), in_flight, copies, t, POLICY)
    return state


def action(
    state: LoadState, copies: int, now: float, model: ModelRequirements = MODEL
) -> CopyAction:
    return decide_copies(model, copies, state, now, POLICY, limit=10).action


def test_a_copy_is_added_only_once_the_load_has_stayed_high() -> None:
    state = run(LoadState(at=0.0, copies=1), 40.0, 1, 0.0, 20.0)
    assert state.rate_per_copy > POLICY.add_rate
    assert action(state, 1, 20.0) is CopyAction.KEEP  # hot for 10 s only
    state = run(state, 40.0, 1, 20.0, 50.0)
    decision = decide_copies(MODEL, 1, state, 50.0, POLICY, limit=10)
    assert decision.action is CopyAction.ADD
    assert "req/s" in decision.reason and "for 40s" in decision.reason


def test_a_short_spike_adds_no_copy() -> None:
    state = run(LoadState(at=0.0, copies=1), 40.0, 1, 0.0, 20.0)
    state = run(state, 0.0, 1, 20.0, 40.0)  # the rate decays below the threshold
    assert state.hot_since is None
    state = run(state, 40.0, 1, 40.0, 60.0)
    assert action(state, 1, 60.0) is CopyAction.KEEP


def test_requests_queued_per_copy_count_as_load() -> None:
    state = run(LoadState(at=0.0, copies=2), 0.5, 2, 0.0, 60.0, in_flight=12)
    assert action(state, 2, 60.0) is CopyAction.ADD


def test_the_clock_restarts_when_the_number_of_copies_changes() -> None:
    state = run(LoadState(at=0.0, copies=1), 40.0, 1, 0.0, 50.0)
    assert action(state, 1, 50.0) is CopyAction.ADD
    # Two copies now, each still above 10 req/s: the second add waits another add_after.
    state = observe(state, 400, 0, 2, 60.0, POLICY)
    assert state.hot_since == 60.0
    assert action(state, 2, 60.0) is CopyAction.KEEP
    state = run(state, 40.0, 2, 60.0, 90.0)
    assert action(state, 2, 90.0) is CopyAction.ADD


def test_an_extra_copy_goes_only_after_a_long_idle_spell() -> None:
    state = run(LoadState(at=0.0, copies=3), 0.5, 3, 0.0, 100.0)
    assert action(state, 3, 100.0) is CopyAction.KEEP  # idle for 90 s < 120 s
    state = run(state, 0.5, 3, 100.0, 140.0)
    decision = decide_copies(MODEL, 3, state, 140.0, POLICY, limit=10)
    assert decision.action is CopyAction.REMOVE
    assert "below 1" in decision.reason


def test_between_the_thresholds_nothing_changes_either_way() -> None:
    # 5 req/s per copy: not hot (10), not idle (1). Hysteresis: keep, however long.
    state = run(LoadState(at=0.0, copies=2), 10.0, 2, 0.0, 3600.0)
    assert state.hot_since is None and state.idle_since is None
    assert action(state, 2, 3600.0) is CopyAction.KEEP


def test_the_last_copy_is_never_removed_for_idleness() -> None:
    state = run(LoadState(at=0.0, copies=1), 0.0, 1, 0.0, 3600.0)
    assert action(state, 1, 3600.0) is CopyAction.KEEP


def test_a_copy_whose_removal_would_make_the_rest_hot_stays() -> None:
    # Thresholds close together: 14 req/s is idle over two copies (7 < 8) but hot over one.
    policy = CopyPolicy(add_rate=10.0, remove_rate=8.0, remove_after=60.0, half_life=5.0)
    state = LoadState(rate=14.0, at=0.0, copies=2, idle_since=0.0)
    assert decide_copies(MODEL, 2, state, 100.0, policy, limit=10).action is CopyAction.KEEP
    calm = LoadState(rate=9.0, at=0.0, copies=2, idle_since=0.0)
    assert decide_copies(MODEL, 2, calm, 100.0, policy, limit=10).action is CopyAction.REMOVE


def test_min_and_max_copies_and_pins_bound_the_count() -> None:
    keep_two = ModelRequirements("m", min_copies=2, max_copies=3)
    idle = run(LoadState(at=0.0, copies=2), 0.0, 2, 0.0, 3600.0)
    assert action(idle, 2, 3600.0, keep_two) is CopyAction.KEEP  # idle, but min_copies is 2
    assert action(LoadState(), 1, 0.0, keep_two) is CopyAction.ADD  # below min, no load needed
    assert decide_copies(keep_two, 0, None, 0.0, POLICY, limit=10).action is CopyAction.ADD
    hot = run(LoadState(at=0.0, copies=3), 100.0, 3, 0.0, 60.0)
    decision = decide_copies(keep_two, 3, hot, 60.0, POLICY, limit=10)
    assert decision.action is CopyAction.KEEP
    assert "at the bound of 3 copies" in decision.reason
    assert action(hot, 4, 60.0, keep_two) is CopyAction.REMOVE  # max lowered under it
    pinned = ModelRequirements("m", pinned_pods=("a", "b"))
    assert copy_bounds(pinned, limit=10) == (0, 2)
    assert copy_bounds(ModelRequirements("m", min_copies=5), limit=3) == (3, 3)
    assert decide_copies(MODEL, 0, None, 0.0, POLICY, limit=10).action is CopyAction.KEEP


def test_an_irregular_observer_sees_the_same_rate_decay() -> None:
    state = LoadState(rate=80.0, at=0.0, copies=1)
    once = observe(state, 0, 0, 1, 20.0, POLICY)
    twice = observe(observe(state, 0, 0, 1, 10.0, POLICY), 0, 0, 1, 20.0, POLICY)
    assert once.rate == twice.rate == 80.0 / 16  # four half-lives of silence


@given(st.lists(st.tuples(st.integers(0, 600), st.integers(0, 6)), min_size=1, max_size=40))
def test_copies_move_one_step_at_a_time_within_bounds(steps: list[tuple[int, int]]) -> None:
    model = ModelRequirements("m", min_copies=1, max_copies=4)
    state = LoadState(at=0.0, copies=1)
    copies = 1
    t = 0.0
    last_add = last_remove = -1e9
    for count, in_flight in steps:
        t += 10.0
        state = observe(state, count, in_flight, copies, t, POLICY)
        decision = decide_copies(model, copies, state, t, POLICY, limit=3)
        if decision.action is CopyAction.ADD:
            copies += 1
            # Sustained: no add sooner than add_after after any change of the count.
            assert t - max(last_add, last_remove) >= POLICY.add_after
            last_add = t
        elif decision.action is CopyAction.REMOVE:
            copies -= 1
            assert t - max(last_add, last_remove) >= POLICY.remove_after
            last_remove = t
        assert 1 <= copies <= 3


def pod(
    pod_id: str, lru_time: float, in_flight: int = 0, state: PlacementState = PlacementState.LOADED
) -> PodView:
    return PodView(
        pod_id,
        100,
        used=10,
        lru_time=lru_time,
        models={"m": HeldModel("m", 10, lru_time, in_flight, state)},
    )


def test_the_copy_removed_is_idle_and_where_room_is_most_contended() -> None:
    snap = Snapshot(
        (
            pod("old-pod", 100.0),
            pod("busy", 900.0, in_flight=2),
            pod("contended", 800.0),
            pod("loading", 950.0, state=PlacementState.LOADING),
        )
    )
    assert live_copies(snap, "m") == 4
    assert choose_copy_to_remove(snap, MODEL, random.Random(0)) == "contended"
    off_pin = ModelRequirements("m", pinned_pods=("contended", "busy", "loading"))
    assert choose_copy_to_remove(snap, off_pin, random.Random(0)) == "old-pod"
    only_loading = Snapshot((pod("loading", 950.0, state=PlacementState.LOADING),))
    assert choose_copy_to_remove(only_loading, MODEL, random.Random(0)) is None


def test_the_copy_removed_skips_loading_and_dead_copies_wherever_they_are_listed() -> None:
    dead = pod("dead", 990.0)
    snap = Snapshot(
        (
            pod("loading", 999.0, state=PlacementState.LOADING),
            PodView("dead", 100, used=10, lru_time=990.0, alive=False, models=dead.models),
            pod("kept", 500.0),
        )
    )
    assert choose_copy_to_remove(snap, MODEL, random.Random(0)) == "kept"


def test_one_request_in_flight_keeps_a_copy() -> None:
    # "busy" would go (its room is the most contended) but for the one request it is serving.
    snap = Snapshot((pod("busy", 900.0, in_flight=1), pod("idle", 100.0)))
    assert choose_copy_to_remove(snap, MODEL, random.Random(0)) == "idle"


def test_equal_copies_are_chosen_between_at_random() -> None:
    snap = Snapshot((pod("a", 500.0), pod("b", 500.0), pod("c", 500.0)))
    chosen = {choose_copy_to_remove(snap, MODEL, random.Random(seed)) for seed in range(40)}
    assert chosen == {"a", "b", "c"}  # every tied pod can go, and always some pod
    pair = Snapshot((pod("a", 500.0), pod("b", 500.0)))
    assert {choose_copy_to_remove(pair, MODEL, random.Random(seed)) for seed in range(40)} == {
        "a",
        "b",
    }


def test_live_copies_leave_out_dead_and_draining_pods() -> None:
    dead = pod("dead", 10.0)
    draining = pod("draining", 10.0)
    snap = Snapshot(
        (
            pod("up", 10.0),
            PodView("dead", 100, used=10, lru_time=10.0, alive=False, models=dead.models),
            PodView("draining", 100, used=10, lru_time=10.0, draining=True, models=draining.models),
        )
    )
    assert live_copies(snap, "m") == 1
