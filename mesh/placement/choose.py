"""Which pod takes a cache miss: a pure function of a snapshot, `now` and a seeded random source.

The rules, in order (docs/placement.md says why):

0. A pod holding the model in its host tier (evicted from its device, kept in host memory) takes
   it if it can (rules 1-4 over those pods only): a promotion there needs no pull and no file.

1. Only pods that can take the model at all: alive, not draining, not in the caller's exclude
   list, not where the model failed recently, serving its runtime, carrying its labels, among
   its pinned pods if it has any, not already holding it, and with the capacity for it.
2. A pod with free room for the model's estimated size, if any: the one with the fewest loads
   in progress, then the fewest requests in flight; ties broken by the random source.
3. Otherwise every pod is full: the pod whose least recently used model is the oldest in the
   cluster (an approximate global LRU; pods within `lru_slack` seconds of the oldest count as
   equally old and go by fewest loads, then requests in flight, then the random source), and
   only where choose_victims can make room without a model in flight or under the churn guard.

A model with preferred labels (a Predictor's `gpu: preferred`) takes, in order: a preferred pod
with room, any pod with room, a full preferred pod, any full pod. A preference never costs an
eviction that a pod with room would have spared.

The answer is a `Placement` (pod, expected victims) or a `NoPod` whose reason says which
constraint excluded which pods. Nothing raises; the random source is the only state touched.

Sampling: `sample=k` first looks at k pods drawn by the random source (power of k choices;
drawn with replacement, so at most k distinct pods), and scans every pod only when none of those
can take the model, so sampling changes which pod, never whether one is found. It bounds a
decision's cost on a large cluster at the price of a coarser LRU (the oldest of k pods instead
of the oldest of all); docs/placement.md has the numbers. Pinned models are always decided over
their pinned pods.

>>> import random
>>> from mesh.placement.snapshot import ModelRequirements, PodView, Snapshot
>>> snap = Snapshot((PodView("a", capacity=100, used=90), PodView("b", capacity=100, used=10)))
>>> choose_pod(snap, ModelRequirements("m", size=50), now=0.0, rng=random.Random(1))
Placement(pod_id='b', need=0, victims=())
"""

from __future__ import annotations

import enum
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from mesh.placement.eviction import EvictionPlan, plan_eviction
from mesh.placement.failures import ModelFailures
from mesh.placement.snapshot import ModelRequirements, PodView, Snapshot


@dataclass(frozen=True, slots=True)
class PlacementPolicy:
    # The pods' churn guard (`--min-model-age`): models used this recently are not evicted.
    # Keep it equal to the pods' setting, or placement will count on victims a pod refuses.
    min_age: float = 0.0
    # Pods whose LRU ages differ by at most this many seconds are equally old. Instance records
    # are coalesced a few seconds apart, so finer distinctions are noise.
    lru_slack: float = 5.0


DEFAULT_POLICY = PlacementPolicy()


class Rejection(enum.Enum):
    """Why a pod cannot take a model."""

    DEAD = "dead"
    DRAINING = "draining"
    EXCLUDED = "excluded by the caller"
    FAILED = "failed to load it recently"
    RUNTIME = "lack its runtime"
    LABELS = "lack its labels"
    HOLDS = "already hold it"
    TOO_SMALL = "have less capacity than its size"
    NO_ROOM = "are full with nothing evictable (models in flight, guarded or loading)"


@dataclass(frozen=True, slots=True)
class Placement:
    """Load the model on `pod_id`, after unloading `victims` (least recently used first)."""

    pod_id: str
    # Bytes the pod must free for the model (0: it has the room).
    need: int
    victims: tuple[str, ...]

    @property
    def evicts(self) -> bool:
        return bool(self.victims)


@dataclass(frozen=True, slots=True)
class Rejected:
    why: Rejection
    pod_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NoPod:
    """No pod can take the model now; `reason` says which constraint excluded which pods."""

    model_id: str
    reason: str
    rejected: tuple[Rejected, ...] = ()


Decision = Placement | NoPod


def choose_pod(
    snapshot: Snapshot,
    model: ModelRequirements,
    now: float,
    rng: random.Random,
    *,
    exclude: Collection[str] = frozenset(),
    failures: ModelFailures | None = None,
    policy: PlacementPolicy = DEFAULT_POLICY,
    sample: int | None = None,
) -> Decision:
    """The pod that should load `model` after a cache miss (see the module's rules).

    `exclude`: pods the caller already tried for this request. `failures`: the model's recent
    failed loads (FailureLog.for_model). `sample`: look at that many random pods first.
    Same snapshot, arguments and random state: same answer.
    """
    if failures is not None and failures.exhausted:
        return NoPod(model.model_id, failures.describe(now))
    failed = failures.pods if failures is not None else frozenset()
    warm = snapshot.warm(model.model_id)
    if warm:
        pool = [p for p in warm if not model.pinned_pods or p.pod_id in model.pinned_pods]
        if pool:
            decision = _choose(pool, model, now, rng, exclude, failed, policy)
            if isinstance(decision, Placement):
                return decision
    if model.pinned_pods:
        pinned = [p for p in map(snapshot.pod, model.pinned_pods) if p is not None]
        decision = _choose(pinned, model, now, rng, exclude, failed, policy)
        missing = len(model.pinned_pods) - len(pinned)
        if isinstance(decision, NoPod) and missing:
            reason = f"{decision.reason}; {missing} of its pinned pods are not in the cluster"
            return NoPod(model.model_id, reason, decision.rejected)
        return decision
    pods = snapshot.pods
    if model.preferred_labels:
        return _choose_preferring(pods, model, now, rng, exclude, failed, policy)
    if sample is not None and 0 < sample < len(pods):
        # Drawn with replacement: far cheaper than random.sample, and a pod drawn twice only
        # weighs twice in the random tie-break.
        drawn = rng.choices(pods, k=sample)
        decision = _choose(drawn, model, now, rng, exclude, failed, policy)
        if isinstance(decision, Placement):
            return decision
    return _choose(pods, model, now, rng, exclude, failed, policy)


def rejection(
    pod: PodView,
    model: ModelRequirements,
    exclude: Collection[str] = frozenset(),
    failed: Collection[str] = frozenset(),
) -> Rejection | None:
    """Why `pod` can never take `model` as things stand, or None if it can (room aside)."""
    if not pod.alive:
        return Rejection.DEAD
    if pod.draining:
        return Rejection.DRAINING
    pod_id = pod.pod_id
    if pod_id in exclude:
        return Rejection.EXCLUDED
    if pod_id in failed:
        return Rejection.FAILED
    if model.runtime and model.runtime not in pod.runtimes:
        return Rejection.RUNTIME
    labels = pod.labels
    for key, value in model.required_labels.items():
        if labels.get(key) != value:
            return Rejection.LABELS
    if model.model_id in pod.models:
        return Rejection.HOLDS
    if model.size_on(pod) > pod.capacity:
        return Rejection.TOO_SMALL
    return None


def eligible_pods(snapshot: Snapshot, model: ModelRequirements) -> int:
    """How many pods could ever hold a copy of the model: the bound on its copies."""
    pods = snapshot.pods
    if model.pinned_pods:
        pods = tuple(p for p in pods if p.pod_id in model.pinned_pods)
    return sum(
        1
        for p in pods
        if rejection(p, model) in (None, Rejection.HOLDS)  # a holder counts as a copy's place
    )


def _busyness(pod: PodView) -> tuple[int, int]:
    return (pod.loading_count, pod.in_flight)


def _choose(
    pool: Sequence[PodView],
    model: ModelRequirements,
    now: float,
    rng: random.Random,
    exclude: Collection[str],
    failed: Collection[str],
    policy: PlacementPolicy,
) -> Decision:
    size = model.size
    model_id = model.model_id
    runtime = model.runtime
    labels = tuple(model.required_labels.items())
    # Pods with room, least busy so far (fewest loads, then fewest requests in flight).
    roomy: list[PodView] = []
    best_loading = best_in_flight = 0
    full: list[PodView] = []
    oldest = 0.0  # the oldest LRU time among full pods
    rejected: dict[Rejection, list[str]] = {}
    tiered = bool(model.tier_sizes)
    for pod in pool:
        if tiered:  # measured per kind of device: this pod is charged its kind's size
            size = model.size_on(pod)
        # The common case, inlined (this loop is the cost of a decision); rejection() gives
        # the reason for the rest.
        if not (
            pod.alive
            and not pod.draining
            and model_id not in pod.models
            and size <= pod.capacity
            and (not runtime or runtime in pod.runtimes)
            and not labels
            and pod.pod_id not in exclude
            and pod.pod_id not in failed
        ):
            why = rejection(pod, model, exclude, failed)
            if why is not None:
                rejected.setdefault(why, []).append(pod.pod_id)
                continue
        if pod.capacity - pod.used >= size:
            loading, in_flight = pod.loading_count, pod.in_flight
            if (
                not roomy
                or loading < best_loading
                or (loading == best_loading and in_flight < best_in_flight)
            ):
                roomy = [pod]
                best_loading, best_in_flight = loading, in_flight
            elif loading == best_loading and in_flight == best_in_flight:
                roomy.append(pod)
        elif roomy:
            continue  # a pod with room will be chosen: full pods no longer matter
        else:
            if not full or pod.lru_time < oldest:
                oldest = pod.lru_time
            full.append(pod)
    if roomy:
        return Placement(_pick(roomy, rng).pod_id, 0, ())
    if not full:
        return _no_pod(model, len(pool), rejected)
    # The oldest pods first, found in one pass: the first group nearly always has room, so
    # sorting every full pod would be wasted. Only if it has none are the rest sorted.
    horizon = oldest + policy.lru_slack
    group = [p for p in full if p.lru_time <= horizon]
    found = _evict_in(group, model, now, rng, policy, rejected)
    if found is not None:
        return found
    rest = sorted((p for p in full if p.lru_time > horizon), key=lambda p: p.lru_time)
    start = 0
    while start < len(rest):
        horizon = rest[start].lru_time + policy.lru_slack
        end = start + 1
        while end < len(rest) and rest[end].lru_time <= horizon:
            end += 1
        found = _evict_in(rest[start:end], model, now, rng, policy, rejected)
        if found is not None:
            return found
        start = end
    return _no_pod(model, len(pool), rejected)


def _choose_preferring(
    pods: Sequence[PodView],
    model: ModelRequirements,
    now: float,
    rng: random.Random,
    exclude: Collection[str],
    failed: Collection[str],
    policy: PlacementPolicy,
) -> Decision:
    wanted = model.preferred_labels.items()
    matches = [all(p.labels.get(k) == v for k, v in wanted) for p in pods]
    preferred = [p for p, match in zip(pods, matches, strict=True) if match]
    if not preferred or len(preferred) == len(pods):
        return _choose(pods, model, now, rng, exclude, failed, policy)
    others = [p for p, match in zip(pods, matches, strict=True) if not match]
    first = _choose(preferred, model, now, rng, exclude, failed, policy)
    if isinstance(first, Placement) and not first.victims and not first.need:
        return first  # a preferred pod with room
    second = _choose(others, model, now, rng, exclude, failed, policy)
    if isinstance(second, Placement) and not second.victims and not second.need:
        return second  # another pod with room beats an eviction
    if isinstance(first, Placement):
        return first
    if isinstance(second, Placement):
        return second
    return _choose(pods, model, now, rng, exclude, failed, policy)  # the reason, over all


def _evict_in(
    group: list[PodView],
    model: ModelRequirements,
    now: float,
    rng: random.Random,
    policy: PlacementPolicy,
    rejected: dict[Rejection, list[str]],
) -> Placement | None:
    """The first pod of an equally old group, least busy first, where room can be made."""
    if len(group) > 1:
        rng.shuffle(group)
        group.sort(key=_busyness)
    for pod in group:
        plan = plan_eviction(pod, model.size_on(pod), now, policy.min_age)
        if isinstance(plan, EvictionPlan):
            return Placement(pod.pod_id, plan.need, plan.victims)
        rejected.setdefault(Rejection.NO_ROOM, []).append(pod.pod_id)
    return None


def _pick(pods: Sequence[PodView], rng: random.Random) -> PodView:
    return pods[0] if len(pods) == 1 else pods[rng.randrange(len(pods))]


def _no_pod(
    model: ModelRequirements, considered: int, rejected: dict[Rejection, list[str]]
) -> NoPod:
    parts = []
    for why in Rejection:  # a stable order, whatever order the pods were met in
        ids = rejected.get(why)
        if not ids:
            continue
        shown = ", ".join(sorted(ids)[:3]) + (", ..." if len(ids) > 3 else "")
        parts.append(f"{len(ids)} {why.value} ({shown})")
    where = f"the pinned pods {list(model.pinned_pods)}" if model.pinned_pods else "the cluster"
    summary = "; ".join(parts) if parts else "there are no pods"
    reason = (
        f"no pod can take model {model.model_id!r} ({model.size} bytes"
        f"{', runtime ' + model.runtime if model.runtime else ''}"
        f"{', labels ' + str(dict(model.required_labels)) if model.required_labels else ''}): "
        f"of {considered} pods in {where}, {summary}"
    )
    return NoPod(
        model.model_id,
        reason,
        tuple(Rejected(w, tuple(sorted(rejected[w]))) for w in Rejection if rejected.get(w)),
    )
