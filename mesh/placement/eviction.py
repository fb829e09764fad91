"""Which loaded models make room: least recently used first, as one complete, minimal set.

Used by the pod's cache for its own evictions, and by placement to judge what a full pod could
free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


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
