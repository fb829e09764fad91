"""What a pool controller feeds the pool-size policy, read from the mirror and demand records.

`PoolWatch` follows a mirror (a subscriber) and keeps what the records alone do not say at one
instant: the loads started over the last `rate_window` seconds (misses that loaded a copy,
counted once per mesh however many routers saw them) and how long recent loads took, from a
placement's `loading` record to its `loaded` one. `signals()` then assembles the policy's
input for one pool: its pods (instance and placement records: bytes in use, last use, in-flight
requests), that rate, and the requests routers hold for it (mesh.cluster.demand).

A pod belongs to the pool its `pool` label names (no label: the default pool), as a model does
by its required labels (mesh.router.held.pool_of).

    watch = PoolWatch(mirror, "default")
    mirror.subscribe(lambda changes: watch.observe(changes, time.time()))
    signals = watch.signals(time.time(), await read_demand(store, "/mesh/"))
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence

from mesh.cluster.demand import DEFAULT_POOL, DemandRecord, pool_of_pod
from mesh.cluster.mirror import Change, Mirror
from mesh.cluster.records import PlacementState
from mesh.placement.pool import PoolSignals
from mesh.placement.snapshot import Snapshot


class PoolWatch:
    def __init__(self, mirror: Mirror, pool: str = DEFAULT_POOL, rate_window: float = 60.0):
        self._mirror = mirror
        self.pool = pool
        self._window = rate_window
        self._loading: dict[str, float] = {}  # placement key -> when its load began
        self._started: collections.deque[float] = collections.deque()
        self._took: collections.deque[tuple[float, float]] = collections.deque()

    def observe(self, changes: Sequence[Change], now: float) -> None:
        for change in changes:
            if change.kind != "placement":
                continue
            record, previous = change.record, change.previous
            if record is not None and record.state is PlacementState.LOADING:
                if previous is None or previous.state is not PlacementState.LOADING:
                    self._loading[change.key] = now
                    self._started.append(now)
            elif record is not None and record.state is PlacementState.LOADED:
                began = self._loading.pop(change.key, None)
                if began is not None:
                    self._took.append((now, now - began))
            else:
                self._loading.pop(change.key, None)
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._started and self._started[0] < now - self._window:
            self._started.popleft()
        while self._took and self._took[0][0] < now - self._window:
            self._took.popleft()

    def signals(self, now: float, demand: Iterable[DemandRecord]) -> PoolSignals:
        self._trim(now)
        m = self._mirror
        instances = [i for i in m.instances.values() if pool_of_pod(i) == self.pool]
        mine = {i.pod_id for i in instances}
        snapshot = Snapshot.from_records(
            instances,
            (p for pods in m.placements.values() for p in pods.values() if p.pod_id in mine),
            m.models.values(),
        )
        took = [t for _, t in self._took]
        return PoolSignals(
            snapshot.pods,
            now=now,
            misses_per_second=len(self._started) / self._window,
            load_seconds=sum(took) / len(took) if took else 0.0,
            held=sum(d.held for d in demand if d.pool == self.pool),
        )
