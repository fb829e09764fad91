"""Which loaded models make room: least recently used first, as one complete, minimal set.

Used by the pod's cache for its own evictions (`choose_victims`), and by placement to judge what
a full pod could free (`plan_eviction`, on a pod as a snapshot shows it). Nothing here raises:
when no set of victims makes room, the answer says so (None, or CannotFit with the numbers).

>>> models = [Candidate("a", 4, 1.0, 0), Candidate("b", 4, 2.0, 0), Candidate("c", 4, 0.5, 1)]
>>> choose_victims(models, need=6, now=10.0, min_age=0.0)  # c is oldest, but in flight
['a', 'b']
>>> choose_victims(models, need=6, now=10.0, min_age=8.5) is None  # b is under the guard
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # snapshot.py builds on Candidate: import its types for annotations only
    from mesh.placement.snapshot import PodView


@dataclass(frozen=True, slots=True)
class Candidate:
    """What eviction planning needs to know of a loaded model."""

    model_id: str
    size: int
    last_used: float
    in_flight: int


def choose_victims(
    candidates: Sequence[Candidate], need: int, now: float, min_age: float
) -> list[str] | None:
    """The least recently used models whose sizes add up to `need`, or None if none do.

    Skips models in flight and models used within `min_age`. The set is minimal: after taking
    victims oldest first, any victim the others can spare is put back, newest first.
    """
    if need <= 0:
        return []
    eligible = sorted(
        (c for c in candidates if c.in_flight == 0 and now - c.last_used >= min_age),
        key=lambda c: c.last_used,
    )
    chosen: list[Candidate] = []
    freed = 0
    for candidate in eligible:
        if freed >= need:
            break
        chosen.append(candidate)
        freed += candidate.size
    if freed < need:
        return None
    for candidate in reversed(chosen[:-1]):
        if freed - candidate.size >= need:
            chosen.remove(candidate)
            freed -= candidate.size
    return [c.model_id for c in chosen]


@dataclass(frozen=True, slots=True)
class EvictionPlan:
    """Room for a model on a pod: the victims to unload first, least recently used first."""

    pod_id: str
    # Bytes that must be freed (0: the model fits as things stand).
    need: int
    victims: tuple[str, ...]
    freed: int


@dataclass(frozen=True, slots=True)
class CannotFit:
    """No set of victims makes room: the numbers, for the RESOURCE_EXHAUSTED message."""

    pod_id: str
    size: int
    capacity: int
    used: int
    # Bytes held by loaded models that may be evicted (not in flight, not guarded).
    evictable: int
    in_flight: int  # models with requests in flight
    guarded: int  # models used within the churn guard
    loading: int  # copies still loading, which hold room and cannot be evicted

    @property
    def reason(self) -> str:
        if self.size > self.capacity:
            return (
                f"pod {self.pod_id}: the model's {self.size} bytes exceed the whole capacity of "
                f"{self.capacity}"
            )
        return (
            f"pod {self.pod_id}: needs {self.size} bytes, capacity {self.capacity}, used "
            f"{self.used}, evictable {self.evictable} ({self.in_flight} models in flight, "
            f"{self.guarded} used within the churn guard, {self.loading} loading)"
        )


def plan_eviction(pod: PodView, size: int, now: float, min_age: float) -> EvictionPlan | CannotFit:
    """What the pod must unload to take a model of `size` bytes, by choose_victims' rules.

    The pod decides for itself when the load arrives, from fresher numbers; this is the plan
    its snapshot implies, so that placement only sends a load where room can be made.
    """
    need = size - (pod.capacity - pod.used)
    if need <= 0:
        return EvictionPlan(pod.pod_id, 0, (), 0)
    loaded = pod.evictable()
    chosen = choose_victims(loaded, need, now, min_age) if size <= pod.capacity else None
    if chosen is None:
        in_flight = sum(1 for m in loaded if m.in_flight)
        guarded = sum(1 for m in loaded if not m.in_flight and now - m.last_used < min_age)
        evictable = sum(m.size for m in loaded if not m.in_flight and now - m.last_used >= min_age)
        return CannotFit(
            pod.pod_id,
            size,
            pod.capacity,
            pod.used,
            evictable,
            in_flight,
            guarded,
            len(pod.models) - len(loaded),
        )
    models = pod.models
    return EvictionPlan(pod.pod_id, need, tuple(chosen), sum(models[m].size for m in chosen))
