"""How many pods a pool wants, from what sizes a model cache: pure, like the rest of placement.

A pool's size follows four needs, each turned into a number of pods, and the largest wins:

- **bytes**: the models used within `window` seconds, each counted once at its size, must fit
  in the pods' capacity less `headroom` (a cache filled to the brim thrashes);
- **thrash guard**: when the pool misses and its least recently used model is younger than
  `lru_age_floor`, the pool evicts what it will need again soon: one pod more than it has;
- **loads**: misses per second times the seconds a load takes is the number of loads under way
  on average; each pod should spend at most `load_share` of its time loading (an idle pool,
  nothing used within the window and nothing in flight or held, has no loads need: a rate
  measured over a longer span than the window would otherwise hold its last pod, and a miss at
  zero pods is held and brings one back);
- **requests**: requests in flight (held ones included) over `in_flight_per_pod`.

The answer is bounded by `min_pods` and `max_pods`. A pool grows at once. It shrinks by one pod
per decision, and only once it has needed fewer pods than it had for `scale_down_after` seconds (at
once while it has more than `max_pods`, which an operator may have lowered). The pod to drain is
the one whose models matter least: first the fewest bytes of sole copies of models in use (used
within the window or with requests in flight), which its hand-off must load elsewhere, then the
fewest bytes in use. The decision names those models (`handoff`, most recently used first) and is
taken only when the pods that stay have the free room for them, each copy on one pod; the caller
drains the pod through the existing hand-off, so a sole copy of a model in use is never lost with
its pod. With `min_pods` 0 a
pool with no use within the window and nothing in flight goes to zero pods; a request held for a
pool with no pod is in-flight demand and brings one back.

Nothing here reads a clock or does I/O: the caller passes `now` and the state returned by the
last decision (`PoolState`), so the policy is tested and simulated as it runs.

>>> from mesh.placement.snapshot import HeldModel, PodView
>>> pod = PodView("a", capacity=10, models={"m": HeldModel("m", 9, 100.0, 0)})
>>> decide_pool(PoolPolicy(max_pods=4, headroom=0.2), PoolSignals((pod,), now=110.0)).desired
2
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mesh.placement.snapshot import PodView


@dataclass(frozen=True, slots=True)
class PoolPolicy:
    min_pods: int = 1
    max_pods: int = 10
    # A model counts as in use when it served within this many seconds.
    window: float = 300.0
    # Share of a pod's capacity kept free of the working set.
    headroom: float = 0.2
    # Misses while the oldest model is younger than this mean the pool is thrashing.
    lru_age_floor: float = 60.0
    # At most this share of each pod's time goes to loads.
    load_share: float = 0.5
    in_flight_per_pod: float = 32.0
    scale_down_after: float = 300.0
    # What a new pod holds: sizes the pool when it has no pod to ask.
    pod_capacity: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.min_pods <= self.max_pods:
            raise ValueError(f"pods: need 0 <= min ({self.min_pods}) <= max ({self.max_pods})")
        if not 0 <= self.headroom < 1:
            raise ValueError(f"headroom must be in [0, 1), not {self.headroom}")
        if self.load_share <= 0 or self.in_flight_per_pod <= 0:
            raise ValueError("load_share and in_flight_per_pod must be positive")


@dataclass(frozen=True, slots=True)
class PoolSignals:
    """The pool at `now`: its pods (draining ones are on their way out and do not count)."""

    pods: tuple[PodView, ...]
    now: float
    misses_per_second: float = 0.0
    load_seconds: float = 0.0  # mean time a load takes
    # Requests held because no pod of the pool could take them (scale from zero).
    held: int = 0


@dataclass(frozen=True, slots=True)
class PoolState:
    """What one decision hands to the next: since when the pool has needed fewer pods."""

    below_since: float | None = None


@dataclass(frozen=True, slots=True)
class PoolDecision:
    desired: int
    # The pod to drain now, if the pool shrinks; None otherwise.
    remove: str | None
    state: PoolState
    # Each need as a number of pods, for metrics and logs: bytes, thrash, loads, requests.
    needs: dict[str, int] = field(default_factory=dict)
    reason: str = ""
    # The sole copies of models in use on `remove`, most recently used first: what its
    # hand-off must load elsewhere before it goes.
    handoff: tuple[str, ...] = ()


def decide_pool(
    policy: PoolPolicy, signals: PoolSignals, state: PoolState = PoolState()
) -> PoolDecision:
    pods = [p for p in signals.pods if p.alive and not p.draining]
    current = len(pods)
    now = signals.now
    since = now - policy.window
    capacity = _pod_capacity(pods, policy)

    in_use = _models_in_use(pods, since)
    working_set = sum(in_use.values())
    in_flight = sum(p.in_flight for p in pods) + signals.held
    idle = not in_use and not in_flight
    needs = {
        "bytes": math.ceil(working_set / (capacity * (1 - policy.headroom))) if capacity else 0,
        "thrash": current + 1 if _thrashing(pods, signals, policy) else 0,
        "loads": 0
        if idle
        else math.ceil(signals.misses_per_second * signals.load_seconds / policy.load_share - 1e-9),
        "requests": math.ceil(in_flight / policy.in_flight_per_pod),
    }
    wanted = max(needs.values())
    desired = min(max(wanted, policy.min_pods), policy.max_pods)
    if desired >= current:
        why = max(needs, key=lambda k: needs[k]) if desired > current else "steady"
        return PoolDecision(desired, None, PoolState(), needs, why)

    # Fewer pods would do: only after scale_down_after of that, and one pod at a time.
    below_since = state.below_since if state.below_since is not None else now
    over_max = current > policy.max_pods  # max was lowered: no cool-down to wait out
    if now - below_since < policy.scale_down_after and not over_max:
        return PoolDecision(current, None, PoolState(below_since), needs, "cooling down")
    chosen = _removable(pods, since)
    if chosen is None:
        return PoolDecision(
            current, None, PoolState(below_since), needs, "no room elsewhere for a hand-off"
        )
    victim, handoff = chosen
    # One pod per decision; the next decision may take another while the need stays lower.
    return PoolDecision(
        current - 1, victim, PoolState(below_since), needs, "scale down", handoff=handoff
    )


def _pod_capacity(pods: list[PodView], policy: PoolPolicy) -> int:
    if pods:  # a pool's pods are alike; where they are not, the mean is what one pod adds
        return sum(p.capacity for p in pods) // len(pods)
    return policy.pod_capacity


def _models_in_use(pods: list[PodView], since: float) -> dict[str, int]:
    """Model -> size, for every model used since `since` or with requests in flight."""
    sizes: dict[str, int] = {}
    for pod in pods:
        for model in pod.models.values():
            if model.last_used >= since or model.in_flight:
                sizes[model.model_id] = max(sizes.get(model.model_id, 0), model.size)
    return sizes


def _thrashing(pods: list[PodView], signals: PoolSignals, policy: PoolPolicy) -> bool:
    if not pods or signals.misses_per_second <= 0:
        return False
    ages = [signals.now - p.lru_time for p in pods if p.lru_time > 0 and p.models]
    full = [p for p in pods if p.free < p.capacity * policy.headroom]
    return bool(ages) and bool(full) and min(ages) < policy.lru_age_floor


def _removable(pods: list[PodView], since: float) -> tuple[str, tuple[str, ...]] | None:
    """The pod to drain and the sole copies in use it must hand off, or None when no pod's
    hand-off would fit in the free room of the pods that stay (each copy on one pod)."""
    holders: dict[str, int] = {}
    for pod in pods:
        for model_id in pod.models:
            holders[model_id] = holders.get(model_id, 0) + 1
    best: tuple[int, int, str] | None = None
    best_handoff: tuple[str, ...] = ()
    for pod in pods:
        used = [m for m in pod.models.values() if m.last_used >= since or m.in_flight]
        sole = [m for m in used if holders[m.model_id] == 1]
        others = [p for p in pods if p.pod_id != pod.pod_id]
        if not _fits([m.size for m in sole], [max(p.free, 0) for p in others]):
            continue  # the others could not take its hand-off
        key = (sum(m.size for m in sole), sum(m.size for m in used), pod.pod_id)
        if best is None or key < best:
            best = key
            ordered = sorted(sole, key=lambda m: (-m.last_used, m.model_id))
            best_handoff = tuple(m.model_id for m in ordered)
    return None if best is None else (best[2], best_handoff)


def _fits(sizes: list[int], free: list[int]) -> bool:
    """Whether every size finds a pod with room for it, largest first into the roomiest pod
    (first fit decreasing: it may refuse a packing that exists, never accepts one that does
    not)."""
    room = sorted(free, reverse=True)
    for size in sorted(sizes, reverse=True):
        for i, r in enumerate(room):
            if size <= r:
                room[i] -= size
                break
        else:
            return False
    return True
