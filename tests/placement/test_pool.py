"""The pool-size policy: bounded, quick to grow, slow and safe to shrink, down to zero."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.placement.pool import PoolPolicy, PoolSignals, PoolState, decide_pool
from mesh.placement.snapshot import HeldModel, PodView
from tests.placement.strategies import NOW, pod_views

WINDOW = 60.0  # models used since NOW - 60 are in use; strategies' last uses are 900-1000


@st.composite
def pools(draw: st.DrawFn) -> tuple[PoolPolicy, PoolSignals, PoolState]:
    lo = draw(st.integers(0, 3))
    policy = PoolPolicy(
        min_pods=lo,
        max_pods=draw(st.integers(max(lo, 1), 8)),
        window=WINDOW,
        headroom=draw(st.sampled_from([0.0, 0.2, 0.5])),
        scale_down_after=draw(st.sampled_from([0.0, 30.0, 300.0])),
        in_flight_per_pod=draw(st.sampled_from([1.0, 4.0, 32.0])),
        pod_capacity=draw(st.sampled_from([0, 500])),
    )
    n = draw(st.integers(0, 8))
    signals = PoolSignals(
        tuple(draw(pod_views(f"p{i}")) for i in range(n)),
        now=NOW,
        misses_per_second=draw(st.sampled_from([0.0, 0.5, 5.0])),
        load_seconds=draw(st.sampled_from([0.0, 0.2, 2.0])),
        held=draw(st.sampled_from([0, 0, 3])),
    )
    state = PoolState(draw(st.sampled_from([None, NOW, NOW - 100, NOW - 1000])))
    return policy, signals, state


def in_use(pod: PodView) -> set[str]:
    return {m.model_id for m in pod.models.values() if m.last_used >= NOW - WINDOW or m.in_flight}


@settings(max_examples=300)
@given(pools())
def test_the_pool_stays_within_its_bounds_and_shrinks_one_pod_at_a_time(
    case: tuple[PoolPolicy, PoolSignals, PoolState],
) -> None:
    policy, signals, state = case
    decision = decide_pool(policy, signals, state)
    current = sum(p.alive and not p.draining for p in signals.pods)
    assert decision.desired >= policy.min_pods
    # Above max only while it comes down from a larger pool (max lowered), a pod at a time.
    assert decision.desired <= max(policy.max_pods, current)
    assert decision.desired >= current - 1
    if decision.remove is not None:
        assert decision.desired == current - 1
        below_since = NOW if state.below_since is None else state.below_since
        assert NOW - below_since >= policy.scale_down_after or current > policy.max_pods


@settings(max_examples=300)
@given(pools())
def test_a_pod_drained_hands_off_every_sole_copy_in_use_to_room_that_exists(
    case: tuple[PoolPolicy, PoolSignals, PoolState],
) -> None:
    policy, signals, state = case
    decision = decide_pool(policy, signals, state)
    if decision.remove is None:
        assert not decision.handoff
        return
    staying = [
        p for p in signals.pods if p.alive and not p.draining and p.pod_id != decision.remove
    ]
    (gone,) = [p for p in signals.pods if p.pod_id == decision.remove]
    sole = {m for m in in_use(gone) if not any(m in p.models for p in staying)}
    assert set(decision.handoff) == sole
    room = sorted((max(p.free, 0) for p in staying), reverse=True)
    for size in sorted((gone.models[m].size for m in sole), reverse=True):
        i = next(i for i, r in enumerate(room) if size <= r)  # each copy fits on one pod
        room[i] -= size
    last_used = [gone.models[m].last_used for m in decision.handoff]
    assert last_used == sorted(last_used, reverse=True)  # most recently used first


def pod(pod_id: str, capacity: int, **models: tuple[int, float]) -> PodView:
    held = {m: HeldModel(m, size, used, 0) for m, (size, used) in models.items()}
    return PodView(
        pod_id,
        capacity,
        used=sum(s for s, _ in models.values()),
        lru_time=min((u for _, u in models.values()), default=0.0),
        models=held,
    )


def test_a_working_set_larger_than_the_pool_grows_it_at_once() -> None:
    policy = PoolPolicy(min_pods=1, max_pods=5, window=WINDOW, headroom=0.25)
    full = pod("p0", 100, a=(40, NOW - 5), b=(40, NOW - 5), c=(40, NOW - 5))
    decision = decide_pool(policy, PoolSignals((full,), now=NOW))
    assert decision.desired == 2  # 120 bytes in use, 75 usable per pod
    assert decision.needs["bytes"] == 2


def test_a_pool_that_evicts_young_models_while_missing_adds_a_pod() -> None:
    policy = PoolPolicy(min_pods=1, max_pods=5, window=WINDOW, lru_age_floor=60.0)
    # Little in use now, but the oldest model is 10 s old and the pod is full: thrashing.
    busy = pod("p0", 100, a=(95, NOW - 10))
    thrash = PoolSignals((busy,), now=NOW, misses_per_second=2.0, load_seconds=0.1)
    assert decide_pool(policy, thrash).desired == 2
    calm = PoolSignals((busy,), now=NOW, misses_per_second=0.0)
    assert decide_pool(policy, calm).needs["thrash"] == 0


def test_an_idle_pool_goes_to_zero_a_pod_per_decision_and_held_requests_bring_one_back() -> None:
    policy = PoolPolicy(min_pods=0, max_pods=4, window=WINDOW, scale_down_after=100.0)
    pods = [pod(f"p{i}", 100, **{f"m{i}": (10, NOW - 1000)}) for i in range(3)]
    state = PoolState()
    now = NOW
    removed = []
    for _ in range(40):  # a decision every 10 s
        decision = decide_pool(policy, PoolSignals(tuple(pods), now=now), state)
        state = decision.state
        if decision.remove is not None:
            removed.append((now, decision.remove))
            pods = [p for p in pods if p.pod_id != decision.remove]
        now += 10.0
    assert [who for _, who in removed] == ["p0", "p1", "p2"]
    assert removed[0][0] - NOW >= 100.0  # only after a whole scale_down_after without need
    assert [b - a for (a, _), (b, _) in itertools.pairwise(removed)] == [10.0, 10.0]
    # Nothing left; a held request asks for a pod.
    back = decide_pool(policy, PoolSignals((), now=now, held=1), state)
    assert back.desired == 1


def test_demand_that_returns_during_the_cool_down_keeps_every_pod() -> None:
    policy = PoolPolicy(min_pods=0, max_pods=4, window=WINDOW, scale_down_after=100.0)
    pods = (pod("p0", 100, a=(10, NOW - 1000)), pod("p1", 100, b=(10, NOW - 1000)))
    first = decide_pool(policy, PoolSignals(pods, now=NOW))
    assert first.remove is None and first.state.below_since == NOW
    busy = (pod("p0", 100, a=(80, NOW + 50)), pod("p1", 100, b=(80, NOW + 50)))
    again = decide_pool(policy, PoolSignals(busy, now=NOW + 60), first.state)
    assert again.desired == 2 and again.state.below_since is None
    later = decide_pool(policy, PoolSignals(busy, now=NOW + 200), again.state)
    assert later.remove is None


def test_the_pod_drained_is_the_one_with_the_least_to_hand_off() -> None:
    policy = PoolPolicy(min_pods=0, max_pods=4, window=WINDOW, scale_down_after=0.0)
    shared = (
        pod("p0", 1000, a=(50, NOW - 5)),
        pod("p1", 1000, b=(5, NOW - 5), c=(5, NOW - 1)),
        pod("p2", 1000, a=(50, NOW - 5), d=(1, NOW - 900)),
    )
    # p0 and p2 hold no sole copy in use (a is on both); equal bytes in use: by id.
    decision = decide_pool(policy, PoolSignals(shared, now=NOW))
    assert (decision.remove, decision.handoff) == ("p0", ())
    sole = (pod("p0", 100, a=(50, NOW - 5)), pod("p1", 100, b=(5, NOW - 5), c=(5, NOW - 1)))
    decision = decide_pool(policy, PoolSignals(sole, now=NOW))
    assert (decision.remove, decision.handoff) == ("p1", ("c", "b"))
    full = (pod("p0", 60, a=(55, NOW - 5)), pod("p1", 60, b=(55, NOW - 5)))
    assert decide_pool(policy, PoolSignals(full, now=NOW)).remove is None  # no room to hand off


def test_a_sole_copy_too_large_for_any_one_pod_keeps_its_pod() -> None:
    """Room spread over two pods is no room for one copy larger than either share."""
    policy = PoolPolicy(min_pods=0, max_pods=4, window=WINDOW, headroom=0.0, scale_down_after=0.0)
    pods = (
        pod("p0", 100, big=(60, NOW - 5)),  # 30 + 30 free elsewhere, but 60 in one piece
        pod("p1", 100, a=(70, NOW - 5)),
        pod("p2", 100, b=(70, NOW - 5)),
    )
    decision = decide_pool(policy, PoolSignals(pods, now=NOW))
    assert decision.needs["bytes"] == 2  # the pool would shrink if a hand-off fitted
    assert decision.remove is None


def test_a_miss_rate_left_over_from_before_the_window_does_not_hold_an_idle_pools_last_pod() -> (
    None
):
    # The routers measure loads over five minutes; the window may be shorter. A pool whose last
    # use is past the window still shows the load that brought its model in.
    policy = PoolPolicy(min_pods=0, max_pods=4, window=WINDOW, scale_down_after=0.0)
    idle = pod("p0", 100, m=(10, NOW - WINDOW - 1))
    decision = decide_pool(
        policy, PoolSignals((idle,), now=NOW, misses_per_second=0.01, load_seconds=10.0)
    )
    assert (decision.desired, decision.remove) == (0, "p0")
    # The same rate while the model is in use keeps the pod.
    busy = pod("p0", 100, m=(10, NOW - 1))
    signals = PoolSignals((busy,), now=NOW, misses_per_second=0.01, load_seconds=10.0)
    assert decide_pool(policy, signals).desired == 1
