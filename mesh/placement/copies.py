"""How many copies of a model the mesh keeps: one more when its load stays high, one fewer when
an extra copy stays idle, within the model's min_copies, max_copies and pinned pods.

The load of a model is an exponentially weighted request rate (requests per second across all
its copies) plus the requests in flight, both divided by the copies. `observe` folds a count of
requests into a `LoadState` and notes since when the load has been above the add threshold
(hot) or below the remove threshold (idle); `decide_copies` turns that into add, remove or keep.
Two thresholds and two durations give the hysteresis: a copy is added only after the load stayed
above `add_rate` for `add_after` seconds, removed only after it stayed below the much lower
`remove_rate` for `remove_after` seconds, and never if the copies left would be hot at once.

Everything is pure: states in, states and decisions out, time passed in. Nothing raises.

>>> policy = CopyPolicy(add_rate=10.0, add_after=30.0, half_life=5.0)
>>> model = ModelRequirements("m")
>>> state = LoadState(at=0.0, copies=1)
>>> for t in range(10, 60, 10):  # 400 requests every 10 s: 40 req/s on one copy
...     state = observe(state, 400, 0, 1, float(t), policy)
>>> decide_copies(model, 1, state, 50.0, policy, limit=8).action
<CopyAction.ADD: 'add'>
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from mesh.cluster.records import PlacementState
from mesh.placement.snapshot import ModelRequirements, Snapshot


@dataclass(frozen=True, slots=True)
class CopyPolicy:
    # A copy is hot above either figure: requests per second, or requests in flight, per copy.
    add_rate: float = 50.0
    add_queue: float = 4.0
    # Seconds the load must stay hot before a copy is added.
    add_after: float = 30.0
    # An extra copy is idle below both figures (far below the add thresholds: hysteresis).
    remove_rate: float = 5.0
    remove_queue: float = 1.0
    # Seconds the load must stay idle before an extra copy goes.
    remove_after: float = 300.0
    # Half-life of the request rate's exponential weighting, in seconds.
    half_life: float = 15.0


DEFAULT_COPY_POLICY = CopyPolicy()


@dataclass(frozen=True, slots=True)
class LoadState:
    """A model's load as last observed. Start one with `LoadState(at=now, copies=n)`."""

    # Requests per second across all copies, exponentially weighted.
    rate: float = 0.0
    at: float = 0.0
    copies: int = 0
    in_flight: int = 0
    # Since when the load per copy has been above the add thresholds (None: it is not).
    hot_since: float | None = None
    # Since when the load per copy has been below the remove thresholds (None: it is not).
    idle_since: float | None = None

    @property
    def rate_per_copy(self) -> float:
        return self.rate / self.copies if self.copies else self.rate


def observe(
    state: LoadState,
    requests: int,
    in_flight: int,
    copies: int,
    now: float,
    policy: CopyPolicy = DEFAULT_COPY_POLICY,
) -> LoadState:
    """Fold `requests` counted since `state.at` into the state, as of `now`.

    Observations need not be regular: the weight of the new rate grows with the time since the
    last one, so a model with no requests can simply go unobserved until it is next looked at.
    A change in the number of copies restarts the hot and idle clocks: the per-copy load of the
    old number says nothing about the new one.
    """
    elapsed = now - state.at
    rate = state.rate
    if elapsed > 0:
        weight = 1.0 - 2.0 ** (-elapsed / policy.half_life)
        rate += weight * (requests / elapsed - rate)
    per = max(copies, 1)
    hot = copies > 0 and (rate / per > policy.add_rate or in_flight / per > policy.add_queue)
    idle = rate / per < policy.remove_rate and in_flight / per < policy.remove_queue
    same = copies == state.copies
    return LoadState(
        rate=rate,
        at=max(now, state.at),
        copies=copies,
        in_flight=in_flight,
        hot_since=(state.hot_since if same and state.hot_since is not None else now)
        if hot
        else None,
        idle_since=(state.idle_since if same and state.idle_since is not None else now)
        if idle
        else None,
    )


class CopyAction(enum.Enum):
    ADD = "add"
    REMOVE = "remove"
    KEEP = "keep"


@dataclass(frozen=True, slots=True)
class CopyDecision:
    action: CopyAction
    reason: str


def copy_bounds(model: ModelRequirements, limit: int) -> tuple[int, int]:
    """(fewest, most) copies of the model: min_copies and max_copies within `limit`, the pods
    that could hold a copy (placement.choose.eligible_pods), itself within the pinned pods."""
    most = limit
    if model.max_copies:
        most = min(most, model.max_copies)
    if model.pinned_pods:
        most = min(most, len(model.pinned_pods))
    return min(model.min_copies, most), most


def decide_copies(
    model: ModelRequirements,
    copies: int,
    state: LoadState | None,
    now: float,
    policy: CopyPolicy = DEFAULT_COPY_POLICY,
    *,
    limit: int,
) -> CopyDecision:
    """Add a copy, remove one, or keep them as they are.

    `copies`: loaded and loading copies on live pods. `state`: the model's load (None: never
    observed). `limit`: how many pods could hold a copy. One step at a time: a caller that acts
    on ADD or REMOVE observes again (with the new count) before the next step.
    """
    fewest, most = copy_bounds(model, limit)
    if copies > most:
        return CopyDecision(CopyAction.REMOVE, f"{copies} copies, more than the bound of {most}")
    if copies < fewest:
        return CopyDecision(CopyAction.ADD, f"{copies} copies, fewer than min_copies {fewest}")
    if state is None or copies == 0:
        return CopyDecision(CopyAction.KEEP, "no load observed")
    per = state.rate_per_copy
    if state.hot_since is not None and now - state.hot_since >= policy.add_after:
        why = (
            f"{per:.1f} req/s and {state.in_flight / copies:.1f} in flight per copy, above "
            f"{policy.add_rate:g} or {policy.add_queue:g} for {now - state.hot_since:.0f}s"
        )
        if copies < most:
            return CopyDecision(CopyAction.ADD, why)
        return CopyDecision(CopyAction.KEEP, f"{why}, but at the bound of {most} copies")
    if (
        copies > max(1, fewest)
        and state.idle_since is not None
        and now - state.idle_since >= policy.remove_after
    ):
        left = copies - 1
        # Never remove a copy whose removal would make the rest hot: that is a flap.
        if state.rate / left <= policy.add_rate and state.in_flight / left <= policy.add_queue:
            return CopyDecision(
                CopyAction.REMOVE,
                f"{per:.2f} req/s per copy, below {policy.remove_rate:g} for "
                f"{now - state.idle_since:.0f}s",
            )
    return CopyDecision(CopyAction.KEEP, f"{per:.1f} req/s per copy")


def live_copies(snapshot: Snapshot, model_id: str) -> int:
    """Copies that serve or soon will: loaded or loading, on pods alive and not draining."""
    return sum(1 for p in snapshot.holders(model_id) if p.alive and not p.draining)


def choose_copy_to_remove(
    snapshot: Snapshot, model: ModelRequirements, rng: random.Random
) -> str | None:
    """The pod whose copy of the model should go, or None if no loaded copy can.

    A copy off the model's pinned pods goes first (the pins changed), then one with no request
    in flight, then the one on the pod whose room is most contended (its least recently used
    model is the youngest), since the room freed there is worth the most. Ties: random.
    """
    best: list[str] = []
    best_key: tuple[bool, bool, float] | None = None
    for pod in snapshot.holders(model.model_id):
        held = pod.models[model.model_id]
        if held.state is not PlacementState.LOADED or not pod.alive:
            continue
        pinned = bool(model.pinned_pods) and pod.pod_id in model.pinned_pods
        key = (pinned, held.in_flight > 0, -pod.lru_time)
        if best_key is None or key < best_key:
            best, best_key = [pod.pod_id], key
        elif key == best_key:
            best.append(pod.pod_id)
    if not best:
        return None
    return best[0] if len(best) == 1 else best[rng.randrange(len(best))]
