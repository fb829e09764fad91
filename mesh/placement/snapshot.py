"""The cluster as placement sees it: frozen views of pods and models, taken at one moment.

Placement decides from a Snapshot and nothing else. The router builds one from its etcd mirror
with `Snapshot.from_records`; the simulator (bench/simulate.py) builds its own views directly.
A snapshot is a picture, not the truth: records arrive late (instance records are coalesced a
few seconds apart), so a decision taken from it is a good guess that the pod confirms or refuses
(for example with RESOURCE_EXHAUSTED), and the caller retries elsewhere with an exclude list.

Nothing here raises on odd records: a placement for a pod with no instance record is dropped
(the pod's lease is gone), a failed placement is no copy (failures live in placement.failures),
and a model registered without a size estimate is charged `default_size`.

>>> pod = PodView("pod-a", capacity=8 << 30, used=2 << 30, runtimes=frozenset({"onnx"}))
>>> snap = Snapshot(pods=(pod,))
>>> snap.pod("pod-a").free
6442450944
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from mesh.cluster.records import (
    InstanceRecord,
    ModelRecord,
    PlacementRecord,
    PlacementState,
    device_tier,
)
from mesh.placement.eviction import Candidate

# What a model with no size estimate is assumed to take; the pod measures the truth after load.
DEFAULT_SIZE = 256 << 20

_LOADED = PlacementState.LOADED  # a module global: faster to reach than the enum's attribute
_EMPTY: Mapping[str, str] = MappingProxyType({})
_NO_SIZES: Mapping[str, int] = MappingProxyType({})
_NO_TIER_SIZES = _NO_SIZES


@dataclass(frozen=True, slots=True)
class HeldModel(Candidate):
    """A model a pod holds: what eviction needs to know of it, and whether it is loaded yet.

    A Candidate, so that a pod's models go to choose_victims without conversion. A LOADING copy
    takes room but cannot be evicted.
    """

    state: PlacementState = PlacementState.LOADED


@dataclass(frozen=True, slots=True)
class PodView:
    """One pod: its room, its age (the last use of its least recently used model), its load.

    `models` maps model id to what the pod holds (loaded or loading); treat it as read-only.
    """

    pod_id: str
    capacity: int
    used: int = 0
    # Last use of the pod's least recently used loaded model; 0 when it holds none.
    lru_time: float = 0.0
    loading_count: int = 0
    in_flight: int = 0
    draining: bool = False
    alive: bool = True
    runtimes: frozenset[str] = frozenset()
    labels: Mapping[str, str] = field(default_factory=dict)
    models: Mapping[str, HeldModel] = field(default_factory=dict)
    # Models in the pod's host tier: evicted from its device, kept in its host memory, so a
    # load there is a promotion with no pull (the best target for a miss).
    host_models: frozenset[str] = frozenset()
    # The kind of device its models go to (records.device_tier): "host", "cuda", ...
    tier: str = "host"

    @property
    def free(self) -> int:
        """Bytes not yet taken; negative when a load measured larger than its estimate."""
        return self.capacity - self.used

    def holds(self, model_id: str) -> bool:
        """Whether the pod has the model loaded or loading."""
        return model_id in self.models

    def evictable(self) -> list[HeldModel]:
        """Loaded models, the only ones eviction may consider (in flight or not)."""
        loaded = _LOADED
        return [m for m in self.models.values() if m.state is loaded]

    @classmethod
    def from_records(
        cls,
        instance: InstanceRecord,
        placements: Iterable[PlacementRecord],
        size_of: Mapping[str, int] = _NO_SIZES,
        *,
        default_size: int = DEFAULT_SIZE,
        alive: bool = True,
    ) -> PodView:
        """The pod as its instance record and its placement records describe it.

        Placement records arrive by watch as soon as they change, instance records only every
        few seconds: `used` and `loading_count` are the larger of the two accounts, so a load
        the router just started counts at once. A loading copy with no size yet is charged its
        model's estimate (`size_of`, else `default_size`). Placements of other pods are ignored.
        """
        models: dict[str, HeldModel] = {}
        held_bytes = 0
        loading = 0
        for p in placements:
            if p.pod_id != instance.pod_id or p.state is PlacementState.FAILED:
                continue
            size = p.size or size_of.get(p.model_id, 0) or default_size
            # A copy never used since its load last served at its load's start.
            models[p.model_id] = HeldModel(p.model_id, size, p.last_used or p.since, 0, p.state)
            held_bytes += size
            loading += p.state is PlacementState.LOADING
        lru_time = instance.lru_time
        if lru_time <= 0:
            loaded = [m.last_used for m in models.values() if m.state is PlacementState.LOADED]
            lru_time = min(loaded, default=0.0)
        return cls(
            pod_id=instance.pod_id,
            capacity=instance.capacity,
            used=max(instance.used, held_bytes),
            lru_time=lru_time,
            loading_count=max(instance.loading_count, loading),
            in_flight=instance.in_flight,
            draining=instance.draining,
            alive=alive,
            runtimes=frozenset(instance.runtimes),
            labels=MappingProxyType(dict(instance.labels)),
            models=MappingProxyType(models),
            host_models=frozenset(instance.host_models),
            tier=device_tier(instance.device),
        )


@dataclass(frozen=True, slots=True)
class ModelRequirements:
    """What a model needs of a pod, and how many copies of it the mesh keeps."""

    model_id: str
    # The runtime that loads the model's format; empty: any pod will do.
    runtime: str = ""
    size: int = DEFAULT_SIZE
    required_labels: Mapping[str, str] = field(default_factory=dict)
    # Pods carrying these labels come first among those that can take the model (see choose).
    preferred_labels: Mapping[str, str] = field(default_factory=dict)
    # Pods the model may only go to; empty: any pod.
    pinned_pods: tuple[str, ...] = ()
    min_copies: int = 0
    # 0: no bound beyond the number of pods that can take the model.
    max_copies: int = 0
    # What the model measured on each kind of device (PodView.tier) for its runtime: a pod of
    # that kind is charged this instead of `size` (mesh.placement.choose).
    tier_sizes: Mapping[str, int] = field(default_factory=dict)

    def size_on(self, pod: PodView) -> int:
        """What a copy of the model takes on `pod`: as measured on its kind of device, else
        `size`."""
        return self.tier_sizes.get(pod.tier, self.size) if self.tier_sizes else self.size

    @classmethod
    def from_record(
        cls,
        record: ModelRecord,
        *,
        default_size: int = DEFAULT_SIZE,
        runtime_of: Mapping[str, str] = _EMPTY,
    ) -> ModelRequirements:
        """The record's requirements. Formats name runtimes ("onnx", "xgboost", "torch")
        unless `runtime_of` maps a format to another runtime name."""
        runtime = runtime_of.get(record.format, record.format)
        prefix = f"{runtime}/"
        tier_sizes = (
            {
                key[len(prefix) :]: size
                for key, size in record.measured_sizes.items()
                if key.startswith(prefix) and size > 0
            }
            if record.measured_sizes and not record.size_estimate  # a given estimate wins
            else {}
        )
        return cls(
            model_id=record.model_id,
            runtime=runtime,
            tier_sizes=MappingProxyType(tier_sizes) if tier_sizes else _NO_TIER_SIZES,
            size=record.size_estimate or record.measured_size or default_size,
            required_labels=MappingProxyType(dict(record.required_labels)),
            preferred_labels=MappingProxyType(dict(record.preferred_labels)),
            pinned_pods=tuple(record.pinned_pods),
            min_copies=record.min_copies,
            max_copies=record.max_copies,
        )


class TypicalSizes:
    """`typical_sizes` kept up to date record by record, for a router with many models: each
    change costs a bisect into its format's sorted sizes, and a lookup costs nothing, where
    recomputing from every record on each miss cost time in the number of models registered.

    >>> t = TypicalSizes([ModelRecord("a", "onnx", measured_size=10)])
    >>> t.update(None, ModelRecord("b", "onnx", measured_size=30))
    >>> t.update(None, ModelRecord("c", "onnx", measured_size=20))
    >>> t.sizes()
    {'onnx': 20}
    """

    def __init__(self, models: Iterable[ModelRecord] = ()) -> None:
        self._sorted: dict[str, list[int]] = {}
        self._cache: dict[str, int] | None = None
        for record in models:
            self.update(None, record)

    def update(self, previous: ModelRecord | None, record: ModelRecord | None) -> None:
        """A model record changed from `previous` to `record` (None: absent)."""
        old = (previous.format, previous.measured_size) if previous is not None else None
        new = (record.format, record.measured_size) if record is not None else None
        if old == new:
            return
        if old is not None and old[1] > 0:
            sizes = self._sorted.get(old[0], [])
            i = bisect.bisect_left(sizes, old[1])
            if i < len(sizes) and sizes[i] == old[1]:  # a change never seen adds, never drifts
                del sizes[i]
            if not sizes:
                self._sorted.pop(old[0], None)
        if new is not None and new[1] > 0:
            bisect.insort(self._sorted.setdefault(new[0], []), new[1])
        self._cache = None

    def sizes(self) -> dict[str, int]:
        if self._cache is None:
            self._cache = {fmt: found[len(found) // 2] for fmt, found in self._sorted.items()}
        return self._cache


def mesh_size_factors(instances: Iterable[InstanceRecord]) -> dict[str, float]:
    """Per format, the median of the size factors (bytes in memory per byte on disk) the pods
    learned from their loads and publish in their instance records.

    >>> mesh_size_factors([InstanceRecord("a", "", 1, size_factors={"onnx": 2.0}),
    ...                    InstanceRecord("b", "", 1, size_factors={"onnx": 3.0, "torch": 1.5}),
    ...                    InstanceRecord("c", "", 1, size_factors={"onnx": 9.0})])
    {'onnx': 3.0, 'torch': 1.5}
    """
    found: dict[str, list[float]] = {}
    for i in instances:
        for fmt, factor in i.size_factors.items():
            if factor > 0:
                found.setdefault(fmt, []).append(factor)
    return {fmt: sorted(f)[len(f) // 2] for fmt, f in found.items()}


def estimated_size(
    record: ModelRecord, factors: Mapping[str, float], typical: Mapping[str, int], default: int
) -> int:
    """What a model with no size given or measured is expected to take, in order: its files'
    bytes on disk times its format's factor across the mesh (`mesh_size_factors`), else the
    median measured size of its format (`typical_sizes`), else `default`. (A size given at
    registration and a measured one come first: `ModelRequirements.from_record`.)

    >>> r = ModelRecord("m", "onnx", artifact_bytes=1000)
    >>> estimated_size(r, {"onnx": 2.5}, {"onnx": 99}, 7)
    2500
    >>> estimated_size(r, {}, {"onnx": 99}, 7), estimated_size(ModelRecord("n", "onnx"), {}, {}, 7)
    (99, 7)
    """
    factor = factors.get(record.format, 0.0)
    if record.artifact_bytes > 0 and factor > 0:
        return max(int(record.artifact_bytes * factor), 1)
    return typical.get(record.format, default)


def typical_sizes(models: Iterable[ModelRecord]) -> dict[str, int]:
    """Per format, the median size measured across the mesh's models: the estimate of a model
    of that format never loaded and registered without one (learned from every pod's loads,
    where a default of 256 MiB would make a small pod look full after two misses)."""
    sizes: dict[str, list[int]] = {}
    for r in models:
        if r.measured_size > 0:
            sizes.setdefault(r.format, []).append(r.measured_size)
    return {fmt: sorted(found)[len(found) // 2] for fmt, found in sizes.items()}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every pod the router knows of, and the registered models' requirements.

    >>> snap = Snapshot.from_records(
    ...     [InstanceRecord("pod-a", "10.0.0.1:8085", capacity=1 << 30)],
    ...     [PlacementRecord("m", "pod-a", PlacementState.LOADED, since=5.0, size=1 << 20)],
    ...     [ModelRecord("m", "onnx")],
    ... )
    >>> [p.pod_id for p in snap.holders("m")]
    ['pod-a']
    """

    pods: tuple[PodView, ...]
    models: Mapping[str, ModelRequirements] = field(default_factory=dict)
    # Built on first lookup by id; a cache, so not part of the snapshot's value.
    _by_id: dict[str, PodView] | None = field(
        default=None, init=False, repr=False, compare=False, hash=False
    )
    _warm: dict[str, tuple[PodView, ...]] | None = field(
        default=None, init=False, repr=False, compare=False, hash=False
    )

    def pod(self, pod_id: str) -> PodView | None:
        by_id = self._by_id
        if by_id is None:
            by_id = {p.pod_id: p for p in self.pods}
            object.__setattr__(self, "_by_id", by_id)
        return by_id.get(pod_id)

    def warm(self, model_id: str) -> tuple[PodView, ...]:
        """Pods holding the model in their host tier (in pod order)."""
        index = self._warm
        if index is None:
            built: dict[str, list[PodView]] = {}
            for p in self.pods:
                for m in p.host_models:
                    built.setdefault(m, []).append(p)
            index = {m: tuple(ps) for m, ps in built.items()}
            object.__setattr__(self, "_warm", index)
        return index.get(model_id, ())

    def holders(self, model_id: str) -> tuple[PodView, ...]:
        """Pods that hold the model, loaded or loading."""
        return tuple(p for p in self.pods if model_id in p.models)

    def requirements(self, model_id: str) -> ModelRequirements | None:
        return self.models.get(model_id)

    def without_copies(self, model_id: str, pod_ids: Collection[str]) -> Snapshot:
        """This snapshot with `pod_ids` holding no copy of `model_id`: those pods answered that
        they have none (evicted since their record was read), so a load may go to them. Their
        room is left as recorded (the eviction frees it in their next record)."""
        if not pod_ids:
            return self
        pods = tuple(
            dataclasses.replace(
                p, models=MappingProxyType({m: h for m, h in p.models.items() if m != model_id})
            )
            if p.pod_id in pod_ids and model_id in p.models
            else p
            for p in self.pods
        )
        return Snapshot(pods=pods, models=self.models)

    @classmethod
    def from_records(
        cls,
        instances: Iterable[InstanceRecord],
        placements: Iterable[PlacementRecord],
        models: Iterable[ModelRecord],
        *,
        default_size: int = DEFAULT_SIZE,
        runtime_of: Mapping[str, str] = _EMPTY,
        dead: Collection[str] = (),
        typical: Mapping[str, int] | None = None,
        factors: Mapping[str, float] | None = None,
    ) -> Snapshot:
        """The snapshot the router's mirror describes.

        `dead`: pods whose records still stand but that the router found unreachable; they are
        kept in the snapshot (their copies still count) and never chosen. `typical`: the
        per-format estimates (`typical_sizes`) when the caller keeps them; else they come from
        `models`. `factors`: the per-format size factors (`mesh_size_factors`); else they come
        from `instances`. A model with no size given or measured is sized by `estimated_size`.
        """
        models = list(models)
        instances = list(instances)
        if typical is None:
            typical = typical_sizes(models)
        if factors is None:
            factors = mesh_size_factors(instances)
        requirements = {
            r.model_id: ModelRequirements.from_record(
                r,
                default_size=estimated_size(r, factors, typical, default_size),
                runtime_of=runtime_of,
            )
            for r in models
        }
        sizes = {m.model_id: m.size for m in requirements.values()}
        by_pod: dict[str, list[PlacementRecord]] = {}
        for p in placements:
            by_pod.setdefault(p.pod_id, []).append(p)
        pods = tuple(
            PodView.from_records(
                i,
                by_pod.get(i.pod_id, ()),
                sizes,
                default_size=default_size,
                alive=i.pod_id not in dead,
            )
            for i in sorted(instances, key=lambda i: i.pod_id)
        )
        return cls(pods=pods, models=MappingProxyType(requirements))
