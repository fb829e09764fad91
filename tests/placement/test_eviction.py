"""Eviction planning: the complete, minimal victim set, least recently used first, never unsafe."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mesh.cluster.records import PlacementState
from mesh.placement.eviction import (
    Candidate,
    CannotFit,
    EvictionPlan,
    choose_victims,
    plan_eviction,
)
from mesh.placement.snapshot import HeldModel, PodView
from tests.placement.strategies import NOW, pod_views


@given(
    st.lists(st.tuples(st.integers(1, 100), st.integers(0, 50), st.integers(0, 2)), max_size=12),
    st.integers(1, 400),
    st.integers(0, 20),
)
def test_victims_are_sufficient_minimal_and_safe(
    models: list[tuple[int, int, int]], need: int, min_age: int
) -> None:
    now = 100.0
    candidates = [
        Candidate(f"m{i}", size, float(last), busy) for i, (size, last, busy) in enumerate(models)
    ]
    chosen = choose_victims(candidates, need, now, min_age)
    by_id = {c.model_id: c for c in candidates}
    eligible = [c for c in candidates if c.in_flight == 0 and now - c.last_used >= min_age]
    if chosen is None:
        assert sum(c.size for c in eligible) < need
        return
    victims = [by_id[m] for m in chosen]
    assert all(v.in_flight == 0 and now - v.last_used >= min_age for v in victims)
    freed = sum(v.size for v in victims)
    assert freed >= need
    assert all(freed - v.size < need for v in victims)  # none could be spared
    assert len(set(chosen)) == len(chosen)


def pod(*models: HeldModel, capacity: int = 100, extra: int = 0) -> PodView:
    return PodView(
        "p",
        capacity,
        used=sum(m.size for m in models) + extra,
        models={m.model_id: m for m in models},
    )


def loaded(model_id: str, size: int, last_used: float, in_flight: int = 0) -> HeldModel:
    return HeldModel(model_id, size, last_used, in_flight)


def test_a_model_that_fits_needs_no_victims() -> None:
    assert plan_eviction(pod(loaded("a", 50, 1.0)), 50, NOW, 0.0) == EvictionPlan("p", 0, (), 0)


def test_victims_come_least_recently_used_first_and_no_more_than_needed() -> None:
    p = pod(
        loaded("newest", 30, 900.0),
        loaded("oldest", 20, 100.0),
        loaded("middle", 30, 500.0),
        loaded("big-new", 20, 800.0),
    )
    # 100 used; 45 must go: oldest (20) + middle (30) = 50 is enough, nothing newer.
    assert plan_eviction(p, 45, NOW, 0.0) == EvictionPlan("p", 45, ("oldest", "middle"), 50)
    # 20 must go: oldest alone.
    assert plan_eviction(p, 20, NOW, 0.0) == EvictionPlan("p", 20, ("oldest",), 20)


def test_models_in_flight_guarded_or_loading_are_never_victims() -> None:
    p = pod(
        loaded("busy", 40, 1.0, in_flight=1),
        loaded("fresh", 20, NOW - 5),
        HeldModel("loading", 20, 1.0, 0, PlacementState.LOADING),
        loaded("ok", 20, 500.0),
    )
    assert plan_eviction(p, 20, NOW, 30.0) == EvictionPlan("p", 20, ("ok",), 20)
    plan = plan_eviction(p, 50, NOW, 30.0)
    assert plan == CannotFit("p", 50, 100, 100, 20, 1, 1, 1)
    assert isinstance(plan, CannotFit)
    assert plan.reason == (
        "pod p: needs 50 bytes, capacity 100, used 100, evictable 20 (1 models in flight, "
        "1 used within the churn guard, 1 loading)"
    )
    # Without the guard the fresh model may go too.
    assert plan_eviction(p, 40, NOW, 0.0) == EvictionPlan("p", 40, ("ok", "fresh"), 40)


def test_a_model_larger_than_the_pod_cannot_fit_whatever_is_evicted() -> None:
    plan = plan_eviction(pod(loaded("a", 10, 1.0)), 101, NOW, 0.0)
    assert isinstance(plan, CannotFit)
    assert "exceed the whole capacity of 100" in plan.reason


def test_an_overfull_pod_must_free_its_excess_too() -> None:
    # A load measured above its estimate left the pod 30 over: 10 more need 40 freed.
    p = pod(loaded("a", 30, 1.0), loaded("b", 50, 2.0), capacity=80, extra=30)
    assert plan_eviction(p, 10, NOW, 0.0) == EvictionPlan("p", 40, ("b",), 50)


@given(pod_views("p"), st.integers(1, 500), st.sampled_from([0.0, 30.0]))
def test_plans_free_enough_safely_and_minimally_or_say_why_not(
    view: PodView, size: int, min_age: float
) -> None:
    plan = plan_eviction(view, size, NOW, min_age)
    evictable = [m for m in view.evictable() if m.in_flight == 0 and NOW - m.last_used >= min_age]
    if isinstance(plan, CannotFit):
        assert size > view.capacity or sum(m.size for m in evictable) < size - view.free
        assert plan.evictable == sum(m.size for m in evictable)
        return
    victims = [view.models[v] for v in plan.victims]
    assert all(v in evictable for v in victims)
    assert plan.freed == sum(v.size for v in victims)
    assert view.used - plan.freed + size <= view.capacity
    assert all(view.used - plan.freed + v.size + size > view.capacity for v in victims)
    # Least recently used first.
    assert [v.last_used for v in victims] == sorted(v.last_used for v in victims)
