"""The mesh at a glance: every pod, model and vmodel, and what happened over the last minutes.

Protocol-neutral: `snapshot()` reads a router's mirror (and its failure log and activity) and
returns frozen records; the management API turns them into `GetMeshStatus`, the capacity page
into JSON. Nothing here does I/O or reads a clock: `now` is passed in.

    activity = Activity(window_minutes=15)
    mirror.subscribe(lambda changes: activity.observe(changes, mirror, time.time()))
    view = snapshot(mirror, activity, failures, time.time())
    view.pods[0].used, view.pods[0].models, view.activity[-1].loads

How it can be wrong: the mirror is this router's view, as fresh as its watch; a pod's `used`
and LRU time are what the pod last published (every few seconds). Loads, evictions and
failures are seen by every router alike (they come from the store); misses are this router's
own. An eviction is a loaded copy that went away while its pod stayed registered (an unload
after `mesh unregister` counts too); copies of a pod that went away are not evictions.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from mesh.cluster.records import (
    InstanceRecord,
    ModelRecord,
    PlacementRecord,
    PlacementState,
    VModelRecord,
)

EVENT_KINDS = ("loads", "evictions", "misses", "failures")


class MirrorView(Protocol):
    """What the snapshot reads: the mirror's plain mappings."""

    @property
    def models(self) -> Mapping[str, ModelRecord]: ...
    @property
    def vmodels(self) -> Mapping[str, VModelRecord]: ...
    @property
    def instances(self) -> Mapping[str, InstanceRecord]: ...
    @property
    def placements(self) -> Mapping[str, Mapping[str, PlacementRecord]]: ...


class FailureView(Protocol):
    def for_model(self, model_id: str, now: float) -> Any: ...


@dataclass(frozen=True, slots=True)
class Minute:
    """Counts over one minute (start: unix seconds, a multiple of 60), mesh-wide and per pod."""

    start: float
    loads: int = 0
    evictions: int = 0
    misses: int = 0
    failures: int = 0
    by_pod: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


class Activity:
    """Loads, evictions, misses and failures in per-minute buckets over a sliding window.

    Fed by the mirror's change stream (`observe`) and by the router's misses (`miss`); keeps
    `window_minutes` buckets, so its memory is bounded whatever the traffic.
    """

    def __init__(self, window_minutes: int = 15) -> None:
        if window_minutes < 1:
            raise ValueError("window_minutes must be at least 1")
        self.window_minutes = window_minutes
        self._buckets: collections.OrderedDict[int, collections.Counter[tuple[str, str]]] = (
            collections.OrderedDict()
        )
        # The state each copy was last seen in, to tell a load from a refresh of its record.
        self._states: dict[str, tuple[str, str, PlacementState]] = {}

    def seed(self, mirror: MirrorView) -> None:
        """Take the copies already in the mirror as known (none of them is a new load)."""
        for model_id, copies in mirror.placements.items():
            for pod_id, p in copies.items():
                self._states[f"{model_id}/{pod_id}"] = (model_id, pod_id, p.state)

    def record(self, kind: str, pod_id: str, now: float) -> None:
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown activity kind {kind!r}")
        minute = int(now // 60)
        bucket = self._buckets.get(minute)
        if bucket is None:
            bucket = self._buckets[minute] = collections.Counter()
            while len(self._buckets) > self.window_minutes:
                self._buckets.popitem(last=False)
        bucket[(kind, pod_id)] += 1

    def miss(self, model_id: str, now: float) -> None:
        self.record("misses", "", now)

    def observe(self, changes: Iterable[Any], mirror: MirrorView, now: float) -> None:
        """A mirror subscriber: count the placement changes in `changes`."""
        for change in changes:
            if change.kind != "placement":
                continue
            record: PlacementRecord | None = change.record
            old = self._states.get(change.key)
            if record is None:
                self._states.pop(change.key, None)
                loaded = old is not None and old[2] is PlacementState.LOADED
                if old is not None and loaded and old[1] in mirror.instances:
                    self.record("evictions", old[1], now)
                continue
            self._states[change.key] = (record.model_id, record.pod_id, record.state)
            if old is not None and old[2] is record.state:
                continue
            if record.state is PlacementState.LOADED:
                self.record("loads", record.pod_id, now)
            elif record.state is PlacementState.FAILED:
                self.record("failures", record.pod_id, now)

    def minutes(self, now: float) -> list[Minute]:
        """The window, oldest first, one entry per minute (empty minutes included)."""
        current = int(now // 60)
        out = []
        for minute in range(current - self.window_minutes + 1, current + 1):
            bucket = self._buckets.get(minute, collections.Counter())
            totals = dict.fromkeys(EVENT_KINDS, 0)
            by_pod: dict[str, dict[str, int]] = {}
            for (kind, pod_id), count in bucket.items():
                totals[kind] += count
                if pod_id:
                    by_pod.setdefault(pod_id, dict.fromkeys(EVENT_KINDS, 0))[kind] += count
            out.append(Minute(start=minute * 60.0, by_pod=by_pod, **totals))
        return out


def pod_loads_per_second(activity: Activity, now: float, minutes: int = 5) -> dict[str, float]:
    """Loads started per pod per second over the last `minutes` whole and current minutes."""
    window = activity.minutes(now)[-minutes:]
    seconds = max(now - window[0].start, 60.0) if window else 60.0
    totals: dict[str, int] = {}
    for minute in window:
        for pod_id, counts in minute.by_pod.items():
            totals[pod_id] = totals.get(pod_id, 0) + counts.get("loads", 0)
    return {pod_id: count / seconds for pod_id, count in totals.items() if count}


@dataclass(frozen=True, slots=True)
class CopyView:
    pod_id: str
    state: str
    size: int
    since: float
    last_used: float
    error: str = ""


@dataclass(frozen=True, slots=True)
class HostCopyView:
    """A model in a pod's host tier: demoted, not serving, promoted there on its next miss."""

    pod_id: str
    host_bytes: int  # 0: the pod did not publish it


@dataclass(frozen=True, slots=True)
class ModelView:
    model_id: str
    format: str
    state: str  # NOT_LOADED, LOADING, LOADED, FAILED
    copies: tuple[CopyView, ...]
    last_used: float
    last_failure: str
    storage_key: str = ""
    storage_path: str = ""
    host_copies: tuple[HostCopyView, ...] = ()


@dataclass(frozen=True, slots=True)
class PodModel:
    model_id: str
    state: str
    size: int
    last_used: float


@dataclass(frozen=True, slots=True)
class PodView:
    pod_id: str
    address: str
    capacity: int
    used: int
    # Copies on this pod, most recently used first.
    models: tuple[PodModel, ...]
    lru_time: float
    loading: int
    in_flight: int
    draining: bool
    updated_at: float
    labels: Mapping[str, str]
    runtimes: tuple[str, ...]
    # Loads, evictions and failures on this pod over the whole window.
    recent: Mapping[str, int]
    # The host tier (host_capacity 0: none) and the models demoted to it, most recent first.
    host_capacity: int = 0
    host_used: int = 0
    host_models: tuple[str, ...] = ()
    device: str = ""


@dataclass(frozen=True, slots=True)
class VModelView:
    vmodel_id: str
    active: str
    target: str
    transition: str  # UP_TO_DATE, IN_PROGRESS, BLOCKED_BY_FAILED_LOAD
    last_failure: str


@dataclass(frozen=True, slots=True)
class Overview:
    now: float
    pods: tuple[PodView, ...]
    models: tuple[ModelView, ...]
    vmodels: tuple[VModelView, ...]
    activity: tuple[Minute, ...]

    def as_dict(self) -> dict[str, Any]:
        """Plain data (for JSON): times stay unix seconds, sizes bytes."""
        return asdict(self)


def host_copies(mirror: MirrorView) -> dict[str, tuple[HostCopyView, ...]]:
    """Every model in some pod's host tier: its pods (sorted) and the bytes each copy takes."""
    held: dict[str, list[HostCopyView]] = collections.defaultdict(list)
    for pod_id, inst in sorted(mirror.instances.items()):
        sizes = inst.host_model_bytes
        known = len(sizes) == len(inst.host_models)
        for i, model_id in enumerate(inst.host_models):
            held[model_id].append(HostCopyView(pod_id, sizes[i] if known else 0))
    return {m: tuple(copies) for m, copies in held.items()}


def model_view(
    model_id: str,
    mirror: MirrorView,
    failures: FailureView | None,
    now: float,
    held: Mapping[str, tuple[HostCopyView, ...]] | None = None,
) -> ModelView | None:
    """One model's state: LOADED if any copy is, else LOADING, else FAILED if a load failed.

    `held`: host_copies(mirror), when the caller builds many views of one mirror."""
    record = mirror.models.get(model_id)
    if record is None:
        return None
    if held is None:
        held = host_copies(mirror)
    copies = []
    last_failure = ""
    states = set()
    for pod_id, p in sorted(mirror.placements.get(model_id, {}).items()):
        copies.append(CopyView(pod_id, p.state.value, p.size, p.since, p.last_used, p.error))
        states.add(p.state)
        if p.state is PlacementState.FAILED:
            last_failure = f"{pod_id}: {p.error}"
    if not last_failure and failures is not None:
        logged = failures.for_model(model_id, now)
        if logged is not None and logged.failures:  # not a pod merely unreachable
            last_failure = logged.describe(now)
    if PlacementState.LOADED in states:
        state = "LOADED"
    elif PlacementState.LOADING in states:
        state = "LOADING"
    elif last_failure:
        state = "FAILED"
    else:
        state = "NOT_LOADED"
    return ModelView(
        model_id=model_id,
        format=record.format,
        state=state,
        copies=tuple(copies),
        last_used=max((c.last_used for c in copies), default=0.0),
        last_failure=last_failure,
        storage_key=record.storage.key,
        storage_path=record.storage.path,
        host_copies=held.get(model_id, ()),
    )


def vmodel_view(
    vmodel_id: str,
    mirror: MirrorView,
    failures: FailureView | None,
    now: float,
    transition_error: str = "",
) -> VModelView | None:
    record = mirror.vmodels.get(vmodel_id)
    if record is None:
        return None
    error = transition_error
    if record.previous and not error:
        # The transition may run on another router: the target's failures are the mesh's.
        target = model_view(record.target, mirror, failures, now)
        if target is not None and target.state == "FAILED":
            error = target.last_failure
    if not record.previous:
        transition = "UP_TO_DATE"
    elif error:
        transition = "BLOCKED_BY_FAILED_LOAD"
    else:
        transition = "IN_PROGRESS"
    return VModelView(vmodel_id, record.active, record.target, transition, error)


def snapshot(
    mirror: MirrorView,
    activity: Activity | None,
    failures: FailureView | None,
    now: float,
    transition_errors: Mapping[str, str] | None = None,
) -> Overview:
    """Everything the mirror knows, as frozen records sorted by name."""
    minutes = activity.minutes(now) if activity is not None else []
    on_pod: dict[str, list[PodModel]] = collections.defaultdict(list)
    for model_id, copies in mirror.placements.items():
        for pod_id, p in copies.items():
            if p.state is not PlacementState.FAILED:
                on_pod[pod_id].append(PodModel(model_id, p.state.value, p.size, p.last_used))
    pods = []
    for pod_id, inst in sorted(mirror.instances.items()):
        recent = dict.fromkeys(EVENT_KINDS, 0)
        for minute in minutes:
            for kind, count in minute.by_pod.get(pod_id, {}).items():
                recent[kind] += count
        models = sorted(on_pod.get(pod_id, []), key=lambda m: (-m.last_used, m.model_id))
        pods.append(
            PodView(
                pod_id=pod_id,
                address=inst.address,
                capacity=inst.capacity,
                used=inst.used,
                models=tuple(models),
                lru_time=inst.lru_time,
                loading=inst.loading_count,
                in_flight=inst.in_flight,
                draining=inst.draining,
                updated_at=inst.updated_at,
                labels=dict(inst.labels),
                runtimes=tuple(inst.runtimes),
                recent=recent,
                host_capacity=inst.host_capacity,
                host_used=inst.host_used,
                host_models=tuple(inst.host_models),
                device=inst.device,
            )
        )
    held = host_copies(mirror)
    views = [model_view(m, mirror, failures, now, held) for m in sorted(mirror.models)]
    errors = transition_errors or {}
    vmodels = [
        vmodel_view(v, mirror, failures, now, errors.get(v, "")) for v in sorted(mirror.vmodels)
    ]
    return Overview(
        now=now,
        pods=tuple(pods),
        models=tuple(m for m in views if m is not None),
        vmodels=tuple(v for v in vmodels if v is not None),
        activity=tuple(minutes),
    )
