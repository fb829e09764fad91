"""Placement simulator: the mesh's placement code driven at a scale no test machine holds.

    .venv/bin/python bench/simulate.py                   # full: 100k models, 1k pods, 10M requests
    .venv/bin/python bench/simulate.py --preset medium   # 20k models, 200 pods, 2M requests
    .venv/bin/python bench/simulate.py --preset small    # 2k models, 20 pods, 200k requests
    .venv/bin/python bench/simulate.py --preset small --check-victims --json out.json
    .venv/bin/python bench/simulate.py --preset small --workloads diurnal \
        --policies mesh,fixed-half,elastic,ideal        # elastic pools against fixed ones

A discrete-event simulation. Requests arrive as a Poisson stream (5 per second per pod) for
models drawn from a Zipf law, in two workloads: `zipf` (fixed popularity) and `shift` (every
100 s a quarter of the hottest 1% of models hand their popularity to models that were cold).
Model sizes are lognormal (median 200 MiB, 4 MiB to 8 GiB), pods hold 16, 32, 48 or 64 GiB;
every preset has the same per-pod traffic, sizes and simulated duration (2,000 s), only more
of everything. A load takes 1 s plus its size at 250 MiB/s; requests for a model that is
loading wait for it. A few models always fail to load and any load fails with probability
0.2%, so the failure log's exclusions and attempt cap are exercised.

Each workload runs under three policies, on the same requests:

- `mesh`: mesh.placement as the router would call it. choose_pod on a miss (sampling 32 pods,
  then every pod if none of those fits; see docs/placement.md), the pod's own LRU eviction with
  the churn guard, copies added and removed by observe/decide_copies/choose_copy_to_remove, and
  failed loads remembered in a FailureLog. Placement reads views of the pods as the router's
  mirror would hold them: a load started, ended or failed and a model evicted show at once
  (placement records, by watch); last uses, and so the pods' LRU order, only with each pod's
  coalesced update every 5 s. So it decides from slightly stale last-use times, as the router
  will, and the pod, which knows better, sometimes evicts other victims or refuses the load
  (then placement tries another pod, with the first excluded).
- `random`: the same, but a miss goes to a uniformly random pod (the pod still evicts LRU).
- `ideal`: one LRU cache with the capacity of all pods together, loads instantaneous and never
  failing, no copies: the hit ratio the pods could reach if they were one machine.
- `mesh-full` (small and medium presets): `mesh` without sampling, every decision a full scan.

Each pod keeps its own LRU in an OrderedDict ordered by last use, and evicts with a fast path
that takes the same victims as mesh.placement.eviction.choose_victims: the least recently used
models past the churn guard, then the same minimality pass (in the simulation no loaded model
has requests in flight, since requests take no time). `--check-victims` runs choose_victims
beside it on every eviction and stops at the first difference; tests/placement runs a tiny
cluster that way, and checks the fast path against choose_victims on random LRU orders.

Reported per policy: hit ratio (requests served by a loaded copy at once), loads, evictions,
waits (requests that waited for a load), rejected requests (no pod: nearly all for the models
past their failed-attempt cap), copies added and removed, the p50/p99 wall time of one
choose_pod call (and of a full scan, timed beside it on every 100th decision), and the etcd
writes per pod per second the policy implies: placement records written when a load starts,
ends or fails and deleted on eviction, plus one coalesced instance update per pod every 5 s when
anything changed. A last column is what per-model last-use times would add if the coalesced
update wrote each changed one to its placement record, instead of carrying them in one value.

Elastic pools: the `diurnal` workload cycles through busy (the full rate), quiet (15%) and idle
(no requests) phases, every 600 s. `fixed-half` is `mesh` with half the pods; `elastic` starts
with none and lets mesh.placement.pool size the pool every 10 s, as the controller would: a pod
asked for serves 20 s later; requests no pod can take are held (up to 30 s, then they fail); a
pod removed is drained, its sole copies in use loaded elsewhere (pessimistically: it stops
serving at once, where the mesh serves from a draining pod until its hand-off is done). The
extra table gives pod-seconds against hit ratio.

Workloads x policies run in parallel processes (`--jobs`, default 2).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import multiprocessing
import os
import platform
import random
import sys
import textwrap
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mesh.cluster.records import PlacementState  # noqa: E402
from mesh.placement.choose import NoPod, PlacementPolicy, choose_pod  # noqa: E402
from mesh.placement.copies import (  # noqa: E402
    CopyAction,
    CopyPolicy,
    LoadState,
    choose_copy_to_remove,
    decide_copies,
    observe,
)
from mesh.placement.eviction import choose_victims  # noqa: E402
from mesh.placement.failures import FailureLog, FailurePolicy  # noqa: E402
from mesh.placement.pool import PoolPolicy, PoolSignals, PoolState, decide_pool  # noqa: E402
from mesh.placement.snapshot import HeldModel, ModelRequirements, PodView, Snapshot  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
LOADED = PlacementState.LOADED
LOADING = PlacementState.LOADING
CHUNK = 1 << 20  # requests turned into Python lists at a time


@dataclass(frozen=True)
class Config:
    models: int
    pods: int
    requests: int
    seed: int = 1
    zipf_s: float = 1.0
    rate_per_pod: float = 5.0  # requests per second per pod
    size_median: float = 200 * MiB
    size_sigma: float = 1.4
    size_min: int = 4 * MiB
    size_max: int = 8 * GiB
    pod_sizes_gib: tuple[int, ...] = (16, 32, 48, 64)
    load_fixed_s: float = 1.0
    load_bytes_per_s: float = 250 * MiB
    # Every shift_every seconds, shift_fraction of the hottest hot_fraction of models hand
    # their popularity to models drawn from the rest.
    shift_every: float = 100.0
    shift_fraction: float = 0.5
    hot_fraction: float = 0.2
    broken_fraction: float = 0.0005  # models that always fail to load
    fail_rate: float = 0.002  # any other load fails with this probability
    sample: int = 32  # pods choose_pod samples first (0: always a full scan)
    min_age: float = 30.0  # the pods' churn guard, seconds
    publish_every: float = 5.0  # coalesced instance updates, seconds
    copy_every: float = 10.0  # how often the copy policy looks, seconds
    # Requests per second one copy serves before another is wanted (CopyPolicy.add_rate); an
    # idle copy is below a tenth of it. The small preset lowers it to see copies at all.
    copy_add_rate: float = 50.0
    full_scan_every: int = 100  # time a full-scan choose_pod beside every Nth decision
    check_victims: bool = False
    # The diurnal workload: a cycle of phases, each (share of the cycle, share of the full rate).
    cycle_s: float = 600.0
    phases: tuple[tuple[float, float], ...] = ((0.4, 1.0), (0.3, 0.15), (0.3, 0.0))
    # Elastic pools (policy `elastic`): mesh.placement.pool decides every pool_every seconds;
    # a pod asked for serves from the first decision pod_start_s later.
    pool_every: float = 10.0
    pod_start_s: float = 20.0
    pool_window: float = 60.0
    scale_down_after: float = 60.0
    hold_timeout: float = 30.0  # a held request not placed by then fails (its deadline)


PRESETS = {
    "small": Config(models=2_000, pods=20, requests=200_000, copy_add_rate=5.0),
    "medium": Config(models=20_000, pods=200, requests=2_000_000),
    "full": Config(models=100_000, pods=1_000, requests=10_000_000),
}
DEFAULT_POLICIES = {
    "small": ("mesh", "mesh-full", "random", "ideal"),
    "medium": ("mesh", "mesh-full", "random", "ideal"),
    "full": ("mesh", "random", "ideal"),
}
WORKLOADS = ("zipf", "shift")
ORDER = {"mesh-full": 0, "mesh": 1, "elastic": 1, "fixed-half": 1, "random": 2, "ideal": 3}


# -- workload ------------------------------------------------------------------------------------


@dataclass
class Workload:
    name: str
    sizes: list[int]
    capacities: list[int]
    broken: frozenset[int]
    times: np.ndarray[Any, np.dtype[np.float64]]
    models: np.ndarray[Any, np.dtype[np.int32]]

    @property
    def duration(self) -> float:
        return float(self.times[-1]) if len(self.times) else 0.0


def make_workload(cfg: Config, kind: str) -> Workload:
    """The same sizes and pods for both kinds; requests differ only in who is popular when."""
    rng = np.random.default_rng(cfg.seed)
    sizes = np.exp(rng.normal(np.log(cfg.size_median), cfg.size_sigma, cfg.models))
    sizes = np.clip(sizes, cfg.size_min, cfg.size_max).astype(np.int64)
    capacities = rng.choice(np.array(cfg.pod_sizes_gib, dtype=np.int64) * GiB, cfg.pods)
    broken = rng.choice(cfg.models, max(1, int(cfg.models * cfg.broken_fraction)), replace=False)
    rate = cfg.rate_per_pod * cfg.pods
    times = np.cumsum(rng.exponential(1.0 / rate, cfg.requests))
    weights = 1.0 / np.arange(1, cfg.models + 1, dtype=np.float64) ** cfg.zipf_s
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    ranks = np.searchsorted(cdf, rng.random(cfg.requests), side="right")
    ranks = np.minimum(ranks, cfg.models - 1)
    # Popularity is independent of size: rank r is model perm[r].
    perm = rng.permutation(cfg.models).astype(np.int32)
    if kind in ("zipf", "diurnal"):
        models = perm[ranks]
    elif kind == "shift":
        models = np.empty(cfg.requests, dtype=np.int32)
        hot = max(1, int(cfg.models * cfg.hot_fraction))
        shift_rng = np.random.default_rng(cfg.seed + 1)
        bounds = np.searchsorted(
            times, np.arange(0.0, times[-1] + cfg.shift_every, cfg.shift_every)
        )
        bounds = np.append(bounds, cfg.requests)
        for start, end in itertools.pairwise(bounds):
            if end > start:
                models[start:end] = perm[ranks[start:end]]
            moved = shift_rng.choice(hot, max(1, int(hot * cfg.shift_fraction)), replace=False)
            into = shift_rng.choice(np.arange(hot, cfg.models), len(moved), replace=False)
            perm[moved], perm[into] = perm[into].copy(), perm[moved].copy()
    else:
        raise ValueError(f"unknown workload {kind!r}")
    if kind == "diurnal":
        # The same stream thinned by the phase's share of the full rate (a Poisson process whose
        # rate follows the phases).
        shares = np.array([share for _, share in cfg.phases])
        ends = np.cumsum([length for length, _ in cfg.phases])
        phase = np.searchsorted(ends / ends[-1], (times % cfg.cycle_s) / cfg.cycle_s, "right")
        keep = rng.random(len(times)) < shares[np.minimum(phase, len(shares) - 1)]
        times, models = times[keep], models[keep]
    return Workload(
        kind,
        sizes.tolist(),
        capacities.tolist(),
        frozenset(int(b) for b in broken),
        times,
        models.astype(np.int32),
    )


_WORKLOADS: dict[tuple[Config, str], Workload] = {}


def workload(cfg: Config, kind: str) -> Workload:
    key = (cfg, kind)
    if key not in _WORKLOADS:
        _WORKLOADS.clear()  # one at a time per process: the full preset's are 120 MB each
        _WORKLOADS[key] = make_workload(cfg, kind)
    return _WORKLOADS[key]


def chunks(w: Workload) -> Iterator[tuple[int, list[float], list[int]]]:
    for start in range(0, len(w.times), CHUNK):
        end = start + CHUNK
        yield start, w.times[start:end].tolist(), w.models[start:end].tolist()


# -- results -------------------------------------------------------------------------------------


@dataclass
class Result:
    workload: str
    policy: str
    requests: int = 0
    hits: int = 0
    waits: int = 0
    rejected: int = 0
    rejected_broken: int = 0  # of which for models that always fail to load
    failed_requests: int = 0
    loads: int = 0
    failed_loads: int = 0
    capacity_refusals: int = 0
    evictions: int = 0
    copies_added: int = 0
    copies_removed: int = 0
    max_copies: int = 0
    placement_writes: int = 0
    instance_writes: int = 0
    last_used_refreshes: int = 0
    predicted_evictions: int = 0
    predictions_right: int = 0
    pods: int = 0
    sim_seconds: float = 0.0
    wall_seconds: float = 0.0
    # Elastic pools: pod-seconds spent, requests held while no pod served, pods started,
    # models dropped by pods removed, the most pods at once.
    pod_seconds: float = 0.0
    held_requests: int = 0
    pods_started: int = 0
    drained_models: int = 0
    max_pods: int = 0
    decide_ns: list[int] = field(default_factory=list)
    full_scan_ns: list[int] = field(default_factory=list)

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def writes_per_pod_s(self) -> float:
        if not self.pods or not self.sim_seconds:
            return 0.0
        return (self.placement_writes + self.instance_writes) / self.pods / self.sim_seconds

    @property
    def refreshes_per_pod_s(self) -> float:
        if not self.pods or not self.sim_seconds:
            return 0.0
        return self.last_used_refreshes / self.pods / self.sim_seconds

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("decide_ns", "full_scan_ns")}
        out["hit_ratio"] = self.hit_ratio
        out["writes_per_pod_s"] = self.writes_per_pod_s
        out["refreshes_per_pod_s"] = self.refreshes_per_pod_s
        out["decide_us_p50"], out["decide_us_p99"] = percentiles(self.decide_ns)
        out["full_scan_us_p50"], out["full_scan_us_p99"] = percentiles(self.full_scan_ns)
        return out


def percentiles(ns: Sequence[int]) -> tuple[float | None, float | None]:
    if not ns:
        return None, None
    ordered = sorted(ns)
    p50 = ordered[len(ordered) // 2] / 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1000
    return p50, p99


# -- ideal global LRU ----------------------------------------------------------------------------


def run_ideal(cfg: Config, w: Workload) -> Result:
    """One LRU cache of all the pods' capacity: instantaneous loads, no failures, no copies."""
    res = Result(w.name, "ideal", pods=cfg.pods, sim_seconds=w.duration)
    started = time.perf_counter()
    capacity = sum(w.capacities)
    sizes = w.sizes
    cache: OrderedDict[int, None] = OrderedDict()
    used = 0
    hits = loads = evictions = 0
    move = cache.move_to_end
    for _start, _times, models in chunks(w):
        for m in models:
            if m in cache:
                move(m)
                hits += 1
                continue
            loads += 1
            size = sizes[m]
            while used + size > capacity:
                victim, _ = cache.popitem(last=False)
                used -= sizes[victim]
                evictions += 1
            cache[m] = None
            used += size
    res.requests = len(w.times)
    res.hits, res.loads, res.evictions = hits, loads, evictions
    res.wall_seconds = time.perf_counter() - started
    return res


# -- the mesh: pods, a router's view of them, placement ------------------------------------------


class Pod:
    __slots__ = (
        "capacity",
        "held",
        "idx",
        "loading",
        "lru",
        "name",
        "touched",
        "used",
        "waiting",
    )

    def __init__(self, idx: int, capacity: int) -> None:
        self.idx = idx
        self.name = f"pod-{idx:04d}"
        self.capacity = capacity
        self.used = 0  # loaded models plus loads in progress
        # Loaded models, least recently used first: model -> last use.
        self.lru: OrderedDict[int, float] = OrderedDict()
        self.loading: dict[int, float] = {}  # model -> when its load ends
        self.waiting = 0  # requests waiting for loads on this pod
        # The router's view of the pod's models, by name (what PodView.models holds).
        self.held: dict[str, HeldModel] = {}
        self.touched: set[int] = set()  # models used since the view was last refreshed


class Mesh:
    """The cluster under one policy: pods with their own LRU, and placement deciding misses."""

    def __init__(
        self, cfg: Config, w: Workload, policy: str, active: int | None = None, min_pods: int = 0
    ) -> None:
        self.cfg = cfg
        self.w = w
        # `elastic` places as `mesh` does; mesh.placement.pool sizes its pool.
        self.elastic = policy == "elastic"
        self.policy = policy = "mesh" if self.elastic else policy
        self.res = Result(w.name, policy, pods=cfg.pods, sim_seconds=w.duration)
        self.rng = random.Random(cfg.seed)
        self.fail_rng = random.Random(cfg.seed + 7)
        self.sample = cfg.sample if policy == "mesh" and cfg.sample else None
        self.placement = PlacementPolicy(min_age=cfg.min_age)
        self.copy_policy = CopyPolicy(
            add_rate=cfg.copy_add_rate, remove_rate=cfg.copy_add_rate / 10
        )
        self.failures = FailureLog(FailurePolicy())
        self.names = [str(m) for m in range(cfg.models)]
        self.reqs = [ModelRequirements(self.names[m], size=s) for m, s in enumerate(w.sizes)]
        self.pods = [Pod(i, c) for i, c in enumerate(w.capacities)]
        self.by_name = {p.name: p for p in self.pods}
        # Pods serving now. An elastic pool starts with none; a fixed one with `active` pods.
        n_active = min_pods if self.elastic else len(self.pods) if active is None else active
        self.active = [i < n_active for i in range(len(self.pods))]
        self.all_active = all(self.active)
        self.pool_policy = PoolPolicy(
            min_pods=min_pods, max_pods=len(self.pods), window=cfg.pool_window,
            scale_down_after=cfg.scale_down_after, pod_capacity=min(w.capacities),
        )  # fmt: skip
        self.pool_state = PoolState()
        self.starting: list[tuple[float, int]] = []  # (serving from, pod) of pods asked for
        # model -> (requests, first held at): held while no pod of the pool can take them.
        self.held: dict[int, tuple[int, float]] = {}
        self.last_pool = 0.0
        self.loads_since = 0
        self.load_seconds_since = 0.0
        # Only placement reads the views; random placement does not keep them.
        self.keep_views = policy == "mesh"
        self.views: list[PodView] = [self.view_of(p, uses=True) for p in self.pods]
        self.snapshot: Snapshot | None = None
        self.dirty: set[int] = set()  # pods changed since the last coalesced update
        self.where: dict[int, list[int]] = {}  # model -> pods with a loaded copy
        self.loading_at: dict[int, int] = {}  # model -> pod loading it
        self.waiters: dict[int, int] = {}  # model -> requests waiting for its load
        self.turn: dict[int, int] = {}  # model -> next copy to serve (round robin)
        self.events: list[tuple[float, int, int, int]] = []  # (end, seq, model, pod) of loads
        self.seq = 0
        self.loads: dict[int, LoadState] = {}  # copy policy state of watched models

    # -- the router's view ----------------------------------------------------------------------

    def view_of(self, pod: Pod, uses: bool) -> PodView:
        """The router's view of the pod; `uses`: with the last uses since the last update."""
        names, sizes = self.names, self.w.sizes
        held = pod.held
        lru = pod.lru
        if uses and pod.touched:
            for m in pod.touched:
                name = names[m]
                held[name] = HeldModel(name, sizes[m], lru[m], 0, LOADED)
            pod.touched.clear()
        return PodView(
            pod.name,
            pod.capacity,
            pod.used,
            next(iter(lru.values())) if lru else 0.0,
            len(pod.loading),
            pod.waiting,
            False,
            True,
            frozenset(),
            {},
            dict(held),
        )

    def refresh(self, pod: Pod) -> None:
        """The router changed the pod (a load started or ended, a model went): it knows at once.

        The placement records say so by watch; last uses wait for the coalesced update.
        """
        if self.keep_views:
            self.views[pod.idx] = self.view_of(pod, uses=False)
            self.snapshot = None
        self.dirty.add(pod.idx)

    def snap(self) -> Snapshot:
        if self.snapshot is None:
            views = self.views if self.all_active else self.active_views()
            self.snapshot = Snapshot(tuple(views))
        return self.snapshot

    def active_views(self) -> list[PodView]:
        return [v for v, on in zip(self.views, self.active, strict=True) if on]

    def publish(self) -> None:
        """The coalesced instance updates: every pod that changed writes once."""
        for idx in self.dirty:
            pod = self.pods[idx]
            self.res.last_used_refreshes += len(pod.touched)
            if self.keep_views:
                self.views[idx] = self.view_of(pod, uses=True)
            else:
                pod.touched.clear()
        self.res.instance_writes += len(self.dirty)
        self.dirty.clear()
        self.snapshot = None

    # -- pods ----------------------------------------------------------------------------------

    def victims(self, pod: Pod, need: int, now: float) -> list[int] | None:
        """The pod's own choice, by choose_victims' rules, from its OrderedDict in LRU order."""
        sizes = self.w.sizes
        min_age = self.cfg.min_age
        chosen: list[int] = []
        freed = 0
        for m, last in pod.lru.items():
            # Ordered by last use, so once one is guarded the rest are too. The test is written
            # as choose_victims writes it, so that rounding cannot tell them apart.
            if freed >= need or now - last < min_age:
                break
            chosen.append(m)
            freed += sizes[m]
        if freed < need:
            chosen_or_none: list[int] | None = None
        else:
            for m in reversed(chosen[:-1]):
                if freed - sizes[m] >= need:
                    chosen.remove(m)
                    freed -= sizes[m]
            chosen_or_none = chosen
        if self.cfg.check_victims:
            held = self.held_now(pod)
            expected = choose_victims(held, need, now, self.cfg.min_age)
            got = None if chosen_or_none is None else [self.names[m] for m in chosen_or_none]
            if expected != got:
                raise AssertionError(f"{pod.name}: fast path {got}, choose_victims {expected}")
        return chosen_or_none

    def held_now(self, pod: Pod) -> list[HeldModel]:
        return [
            HeldModel(self.names[m], self.w.sizes[m], last, 0, LOADED)
            for m, last in pod.lru.items()
        ]

    def start_load(self, m: int, pod: Pod, now: float, predicted: tuple[str, ...] | None) -> bool:
        """The pod makes room and starts the load; False if it cannot make room."""
        size = self.w.sizes[m]
        need = pod.used + size - pod.capacity
        if need > 0:
            victims = self.victims(pod, need, now)
            if victims is None:
                self.res.capacity_refusals += 1
                return False
            if predicted is not None:
                self.res.predicted_evictions += 1
                self.res.predictions_right += predicted == tuple(self.names[v] for v in victims)
            for v in victims:
                self.evict(pod, v)
        pod.used += size
        end = now + self.cfg.load_fixed_s + size / self.cfg.load_bytes_per_s
        self.loads_since += 1
        self.load_seconds_since += end - now
        pod.loading[m] = end
        pod.held[self.names[m]] = HeldModel(self.names[m], size, now, 0, LOADING)
        self.loading_at[m] = pod.idx
        self.seq += 1
        heapq.heappush(self.events, (end, self.seq, m, pod.idx))
        self.res.loads += 1
        self.res.placement_writes += 1
        self.refresh(pod)
        return True

    def evict(self, pod: Pod, m: int, *, copy: bool = False, drained: bool = False) -> None:
        del pod.lru[m]
        pod.used -= self.w.sizes[m]
        del pod.held[self.names[m]]
        pod.touched.discard(m)
        holders = self.where[m]
        holders.remove(pod.idx)
        if not holders:
            del self.where[m]
        if drained:
            self.res.drained_models += 1
        elif copy:
            self.res.copies_removed += 1
        else:
            self.res.evictions += 1
        self.res.placement_writes += 1

    def end_load(self, m: int, pod: Pod, now: float) -> None:
        del pod.loading[m]
        del self.loading_at[m]
        waiting = self.waiters.pop(m, 0)
        pod.waiting -= waiting
        name = self.names[m]
        self.res.placement_writes += 1
        if m in self.w.broken or self.fail_rng.random() < self.cfg.fail_rate:
            pod.used -= self.w.sizes[m]
            del pod.held[name]
            self.failures.record(name, pod.name, now, "simulated load failure")
            self.res.failed_loads += 1
            self.res.failed_requests += waiting
        else:
            pod.lru[m] = now
            pod.held[name] = HeldModel(name, self.w.sizes[m], now, 0, LOADED)
            self.where.setdefault(m, []).append(pod.idx)
            self.failures.clear(name)
        self.refresh(pod)

    # -- placement -----------------------------------------------------------------------------

    def place(self, m: int, now: float) -> bool:
        """Choose a pod and start the load there; False if no pod took it."""
        tried: list[str] = []
        for _ in range(3):
            if self.policy == "random":
                pod = self.random_pod(m)
                predicted = None
            else:
                snapshot = self.snap()
                req = self.reqs[m]
                failures = self.failures.for_model(req.model_id, now)
                t0 = time.perf_counter_ns()
                decision = choose_pod(
                    snapshot,
                    req,
                    now,
                    self.rng,
                    exclude=tried,
                    failures=failures,
                    policy=self.placement,
                    sample=self.sample,
                )
                self.res.decide_ns.append(time.perf_counter_ns() - t0)
                if self.sample and len(self.res.decide_ns) % self.cfg.full_scan_every == 0:
                    t0 = time.perf_counter_ns()
                    choose_pod(
                        snapshot,
                        req,
                        now,
                        random.Random(0),
                        exclude=tried,
                        failures=failures,
                        policy=self.placement,
                    )
                    self.res.full_scan_ns.append(time.perf_counter_ns() - t0)
                if isinstance(decision, NoPod):
                    return False
                pod = self.by_name[decision.pod_id]
                predicted = decision.victims if decision.evicts else None
            if pod is None:
                return False
            if self.start_load(m, pod, now, predicted):
                return True
            tried.append(pod.name)
        return False

    def random_pod(self, m: int) -> Pod | None:
        name = self.names[m]
        if (f := self.failures.for_model(name, now=self.now)) is not None and f.exhausted:
            return None
        failed = f.pods if f is not None else frozenset()
        for _ in range(20):
            pod = self.pods[self.rng.randrange(len(self.pods))]
            if name not in pod.held and pod.name not in failed:
                return pod
        return None

    # -- copies --------------------------------------------------------------------------------

    def copies_tick(self, now: float, counts: np.ndarray[Any, Any], window: float) -> None:
        cp = self.copy_policy
        watch = set(self.loads)
        # A model joins the watch once it reaches the idle threshold on one copy.
        floor = max(1, int(cp.remove_rate * window))
        watch.update(int(m) for m in np.flatnonzero(counts >= floor))
        limit = sum(self.active)
        for m in watch:
            copies = len(self.where.get(m, ()))
            state = self.loads.get(m) or LoadState(at=now - window, copies=copies)
            state = observe(state, int(counts[m]), self.waiters.get(m, 0), copies, now, cp)
            decision = decide_copies(self.reqs[m], copies, state, now, cp, limit=limit)
            if decision.action is CopyAction.ADD and m not in self.loading_at:
                if self.place(m, now):
                    self.res.copies_added += 1
                    self.res.max_copies = max(self.res.max_copies, copies + 1)
            elif decision.action is CopyAction.REMOVE:
                self.remove_copy(m)
            if copies <= 1 and state.hot_since is None and state.rate < cp.remove_rate:
                self.loads.pop(m, None)  # one quiet copy: nothing to decide until it heats up
            else:
                self.loads[m] = state

    def remove_copy(self, m: int) -> None:
        if self.policy == "random":
            holders = self.where[m]
            pod = self.pods[holders[self.rng.randrange(len(holders))]]
        else:
            name = choose_copy_to_remove(self.snap(), self.reqs[m], self.rng)
            if name is None:
                return
            pod = self.by_name[name]
        self.evict(pod, m, copy=True)
        self.refresh(pod)

    # -- elastic pools ---------------------------------------------------------------------------

    def pool_tick(self, now: float) -> None:
        """mesh.placement.pool's decision, acted on as the controller would: pods started (they
        serve pod_start_s later) or one drained and removed (its models dropped)."""
        serving = sum(self.active)
        self.res.pod_seconds += (now - self.last_pool) * (serving + len(self.starting))
        started = [idx for at, idx in self.starting if at <= now]
        if started:
            self.starting = [(at, idx) for at, idx in self.starting if at > now]
            for idx in started:
                self.active[idx] = True
            self.all_active = all(self.active)
            self.snapshot = None
        held, self.held = self.held, {}
        for m, (n, since) in held.items():  # held requests wait for their model's load
            placed = m in self.loading_at or (any(self.active) and self.place(m, now))
            if placed:
                self.waiters[m] = self.waiters.get(m, 0) + n
                self.pods[self.loading_at[m]].waiting += n
            elif now - since >= self.cfg.hold_timeout:  # its deadline passed
                self.res.rejected += n
            else:
                self.held[m] = (n, since)
        elapsed = max(now - self.last_pool, 1e-9)
        signals = PoolSignals(
            tuple(self.active_views()),
            now=now,
            misses_per_second=self.loads_since / elapsed,
            load_seconds=self.load_seconds_since / max(1, self.loads_since),
            held=sum(n for n, _ in self.held.values()),
        )
        decision = decide_pool(self.pool_policy, signals, self.pool_state)
        self.pool_state = decision.state
        self.last_pool, self.loads_since, self.load_seconds_since = now, 0, 0.0
        more = decision.desired - sum(self.active) - len(self.starting)
        if more > 0:
            asked = {idx for _, idx in self.starting}
            idle = [p.idx for p in self.pods if not self.active[p.idx] and p.idx not in asked]
            for idx in idle[:more]:
                self.starting.append((now + self.cfg.pod_start_s, idx))
                self.res.pods_started += 1
        if decision.remove is not None:
            pod = self.by_name[decision.remove]
            if not pod.loading:  # a drain waits for loads in flight; the next tick retries
                for m in list(pod.lru):
                    self.evict(pod, m, drained=True)
                self.active[pod.idx] = False
                self.all_active = False
                self.refresh(pod)
                # The hand-off, pessimistically: the drained pod stops serving at once and its
                # sole copies in use load elsewhere (the mesh keeps serving from the draining
                # pod until they have, so requests here wait where there they would not).
                for name in decision.handoff:
                    m = int(name)
                    if m not in self.where and m not in self.loading_at:
                        self.place(m, now)
        self.res.max_pods = max(self.res.max_pods, sum(self.active))

    def hold(self, m: int, now: float) -> None:
        """No pod can take it: the router holds the request while the pool grows."""
        n, since = self.held.get(m, (0, now))
        self.held[m] = (n + 1, since)
        self.res.held_requests += 1

    # -- the run -------------------------------------------------------------------------------

    def run(self) -> Result:
        started = time.perf_counter()
        cfg, w, res = self.cfg, self.w, self.res
        pods, where, turn, loading_at, waiters = (
            self.pods,
            self.where,
            self.turn,
            self.loading_at,
            self.waiters,
        )
        dirty = self.dirty
        events = self.events
        next_publish = cfg.publish_every
        next_copies = cfg.copy_every
        next_pool = cfg.pool_every if self.elastic else float("inf")
        copy_start = 0  # index of the first request of the current copy window
        self.now = 0.0
        hits = waits = 0
        next_due = min(next_publish, next_copies, next_pool)
        for start, times, models in chunks(w):
            for i, (t, m) in enumerate(zip(times, models, strict=True)):
                if t >= next_due:
                    # Due events in time order: load ends, coalesced updates, copy decisions.
                    while True:
                        due = min(
                            events[0][0] if events else t + 1, next_publish, next_copies, next_pool
                        )
                        if due > t:
                            break
                        if events and events[0][0] == due:
                            _, _, em, ep = heapq.heappop(events)
                            self.end_load(em, pods[ep], due)
                        elif next_publish == due:
                            self.publish()
                            next_publish += cfg.publish_every
                        elif next_pool == due:
                            self.pool_tick(due)
                            next_pool += cfg.pool_every
                        else:
                            self.now = due
                            end = start + i
                            counts = np.bincount(w.models[copy_start:end], minlength=cfg.models)
                            self.copies_tick(due, counts, cfg.copy_every)
                            copy_start = end
                            next_copies += cfg.copy_every
                    next_due = min(
                        events[0][0] if events else t + 1e9, next_publish, next_copies, next_pool
                    )
                holders = where.get(m)
                if holders is not None:
                    hits += 1
                    if len(holders) == 1:
                        pod = pods[holders[0]]
                    else:
                        k = turn.get(m, 0)
                        turn[m] = k + 1
                        pod = pods[holders[k % len(holders)]]
                    lru = pod.lru
                    lru[m] = t
                    lru.move_to_end(m)
                    pod.touched.add(m)
                    dirty.add(pod.idx)
                    continue
                p = loading_at.get(m)
                if p is not None:
                    waits += 1
                    waiters[m] = waiters.get(m, 0) + 1
                    pods[p].waiting += 1
                    continue
                self.now = t
                if self.elastic and (not any(self.active) or m in self.held):
                    self.hold(m, t)
                    continue
                if not self.place(m, t):
                    if self.elastic:
                        self.hold(m, t)
                        continue
                    res.rejected += 1
                    res.rejected_broken += m in w.broken
                # A load started: its end may be the next thing due.
                if events and events[0][0] < next_due:
                    next_due = events[0][0]
        res.requests = len(w.times)
        res.hits, res.waits = hits, waits
        end = w.duration
        if self.elastic:
            res.pod_seconds += (end - self.last_pool) * (sum(self.active) + len(self.starting))
        else:
            res.pod_seconds = sum(self.active) * end
            res.max_pods = sum(self.active)
        res.wall_seconds = time.perf_counter() - started
        return res


# -- driver --------------------------------------------------------------------------------------


def policy_kind(cfg: Config, policy: str) -> tuple[str, int | None, int]:
    """(placement kind, fixed pods serving, elastic floor) of a policy name.

    `fixed-half` and `fixed-N` are `mesh` with half or N of the pods; `elastic-min-N` is the
    elastic pool that never goes below N pods (so the sweep can find equal hit ratios).
    """
    if policy == "random":
        return "random", None, 0
    if policy == "elastic":
        return "elastic", None, 0
    if policy.startswith("elastic-min-"):
        return "elastic", None, min(int(policy.removeprefix("elastic-min-")), cfg.pods)
    if policy == "fixed-half":
        return "mesh", cfg.pods // 2, 0
    if policy.startswith("fixed-"):
        return "mesh", min(int(policy.removeprefix("fixed-")), cfg.pods), 0
    return "mesh", None, 0


def run_one(args: tuple[Config, str, str]) -> dict[str, Any]:
    cfg, kind, policy = args
    w = workload(cfg, kind)
    if policy == "ideal":
        res = run_ideal(cfg, w)
    else:
        mesh_cfg = replace(cfg, sample=0) if policy == "mesh-full" else cfg
        kind, active, min_pods = policy_kind(cfg, policy)
        res = Mesh(mesh_cfg, w, kind, active, min_pods).run()
        res.policy = policy
    return res.summary()


def table(rows: list[dict[str, Any]]) -> str:
    """A markdown table, padded so that it also reads as plain text."""

    def us(v: float | None) -> str:
        return "-" if v is None else f"{v:,.0f}"

    head = [
        "policy",
        "hit ratio",
        "loads",
        "evictions",
        "waits",
        "rejected",
        "copies +/-",
        "choose_pod p50/p99 us",
        "full scan p50/p99 us",
        "etcd writes/pod/s",
        "+last-use/pod/s",
    ]
    body = []
    for r in rows:
        mesh = r["policy"] != "ideal"
        body.append(
            [
                r["policy"],
                f"{r['hit_ratio']:.4f}",
                f"{r['loads']:,}",
                f"{r['evictions']:,}",
                f"{r['waits']:,}",
                f"{r['rejected']:,}",
                f"{r['copies_added']}/{r['copies_removed']}" if mesh else "-",
                f"{us(r['decide_us_p50'])}/{us(r['decide_us_p99'])}",
                f"{us(r['full_scan_us_p50'])}/{us(r['full_scan_us_p99'])}",
                f"{r['writes_per_pod_s']:.3f}" if mesh else "-",
                f"{r['refreshes_per_pod_s']:.2f}" if mesh else "-",
            ]
        )
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        padded = [cells[0].ljust(widths[0])]
        padded += [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(["-" * (widths[0] + 2)] + [("-" * (w + 1)) + ":" for w in widths[1:]])
    return "\n".join([line(head), rule + "|", *(line(b) for b in body)])


def pool_table(rows: list[dict[str, Any]]) -> str:
    """Pod-seconds against hit ratio, for the fixed pools and the elastic one."""
    fixed = next((r for r in rows if r["policy"] == "mesh"), None)
    head = (
        "| policy | hit ratio | pod-seconds | mean pods | max pods | vs fixed pool | held "
        "| started | drained |"
    )
    out = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["policy"] == "ideal":
            continue
        mean = r["pod_seconds"] / r["sim_seconds"] if r["sim_seconds"] else 0.0
        ratio = f"{r['pod_seconds'] / fixed['pod_seconds']:.2f}x" if fixed else "-"
        out.append(
            f"| {r['policy']} | {r['hit_ratio']:.4f} | {r['pod_seconds']:,.0f} | {mean:.1f} | "
            f"{r['max_pods']} | {ratio} | {r['held_requests']:,} | {r['pods_started']} | "
            f"{r['drained_models']:,} |"
        )
    return "\n".join(out)


def reading(rows: list[dict[str, Any]]) -> list[str]:
    by = {r["policy"]: r for r in rows}
    out = []
    ideal = by.get("ideal")
    for name in ("mesh", "mesh-full", "random"):
        r = by.get(name)
        if r is None or ideal is None:
            continue
        miss = 1 - r["hit_ratio"]
        ideal_miss = 1 - ideal["hit_ratio"]
        out.append(
            f"{name}: miss ratio {miss:.4f} = {miss / ideal_miss:.2f}x ideal LRU's "
            f"{ideal_miss:.4f}; loads {r['loads'] / ideal['loads']:.2f}x ideal's"
        )
    if "mesh" in by and "random" in by:
        m, rnd = by["mesh"], by["random"]
        out.append(
            f"mesh vs random: miss ratio {(1 - m['hit_ratio']) / (1 - rnd['hit_ratio']):.2f}x, "
            f"loads {m['loads'] / rnd['loads']:.2f}x, evictions "
            f"{m['evictions'] / max(1, rnd['evictions']):.2f}x"
        )
    if "mesh" in by and by["mesh"]["predicted_evictions"]:
        m = by["mesh"]
        out.append(
            f"mesh: the pod evicted the victims placement expected in "
            f"{m['predictions_right'] / m['predicted_evictions']:.1%} of "
            f"{m['predicted_evictions']:,} evicting loads; {m['capacity_refusals']} loads "
            f"refused by a pod that could not make room (then placed elsewhere); "
            f"{m['failed_loads']} failed loads, {m['failed_requests']} requests failed with them; "
            f"{m['rejected_broken']:,} of {m['rejected']:,} rejected requests were for the "
            f"models that always fail"
        )
    return out


def headline(cfg: Config, preset: str, jobs: int) -> str:
    return (
        f"preset {preset}: {cfg.models:,} models, {cfg.pods:,} pods, {cfg.requests:,} requests "
        f"per workload, seed {cfg.seed}, choose_pod sample {cfg.sample or 'all'}; {jobs} "
        f"processes\nmachine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.processor() or platform.machine()}"
    )


def report(results: list[dict[str, Any]], kinds: list[str], total: float) -> None:
    for kind in kinds:
        rows = sorted(
            (r for r in results if r["workload"] == kind), key=lambda r: ORDER.get(r["policy"], 1)
        )
        sim_s = rows[0]["sim_seconds"] if rows else 0.0
        print(f"\nworkload {kind}: {sim_s:,.0f} s simulated\n")
        print(table(rows))
        print()
        for line in reading(rows):
            print(textwrap.fill(line, 100, initial_indent="- ", subsequent_indent="  "))
        print("- wall s: " + ", ".join(f"{r['policy']} {r['wall_seconds']:.1f}" for r in rows))
        if any(r["policy"].startswith("elastic") for r in rows):
            print()
            print(pool_table(rows))
    print(f"\nwhole run: {total:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Simulate mesh placement at scale.")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument(
        "--policies", help="comma-separated: mesh,mesh-full,random,ideal,elastic,fixed-half"
    )
    parser.add_argument("--requests", type=int, help="override the preset's request count")
    parser.add_argument("--sample", type=int, help="pods choose_pod samples first (0: all)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--check-victims", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--report", type=Path, help="print the tables of a --json file, no run")
    args = parser.parse_args(argv)
    if args.report:
        saved = json.loads(args.report.read_text())
        print(saved["headline"])
        report(saved["results"], saved["kinds"], saved["wall_s"])
        return 0

    cfg = replace(PRESETS[args.preset], seed=args.seed, check_victims=args.check_victims)
    if args.requests:
        cfg = replace(cfg, requests=args.requests)
    if args.sample is not None:
        cfg = replace(cfg, sample=args.sample)
    policies = args.policies.split(",") if args.policies else list(DEFAULT_POLICIES[args.preset])
    kinds = args.workloads.split(",")
    # Slowest first, so that two processes finish together.
    jobs = sorted(
        ((cfg, k, p) for k in kinds for p in policies), key=lambda j: (ORDER.get(j[2], 9), j[1])
    )
    head = headline(cfg, args.preset, args.jobs)
    print(head)
    started = time.perf_counter()
    if args.jobs > 1:
        with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
            results = pool.map(run_one, jobs, chunksize=1)
    else:
        results = [run_one(j) for j in jobs]
    total = time.perf_counter() - started
    report(results, kinds, total)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "headline": head,
                    "config": asdict(cfg),
                    "kinds": kinds,
                    "results": results,
                    "wall_s": total,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
