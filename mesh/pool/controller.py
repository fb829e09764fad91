"""A pool controller: mesh.placement.pool's decisions, acted on through a pod launcher.

Every `interval` seconds it reads the pool's signals (the mirror's pods and loads, the demand
records routers publish while they hold requests: mesh.pool.signals), asks `decide_pool` for
the pool's size and acts: starts the pods missing (counting those started and not registered
yet, so a slow start is not started twice), or drains the one pod the decision names, through
the pod's own drain and hand-off (SIGTERM), one at a time: no other removal while a pod drains.
A pod that exits on its own (a crash, or a recycle: exit status 75) is forgotten and replaced by
the next decision when the pool still needs it.

    controller = PoolController(store, "/mesh/", PoolPolicy(min_pods=0, max_pods=4), pods)
    await controller.start()
    ...                      # runs until
    await controller.aclose()

How it fails: etcd unreachable, a step keeps the last demand it read and logs; a pod that
cannot start is the launcher's error, logged, and tried again at the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from mesh.cluster.codec import Keys
from mesh.cluster.demand import DEFAULT_POOL, DemandRecord, read_demand
from mesh.cluster.mirror import Mirror
from mesh.cluster.store import KeyValueStore
from mesh.errors import MeshError
from mesh.lifecycle import stop_task
from mesh.placement.pool import PoolDecision, PoolPolicy, PoolState, decide_pool
from mesh.pool.local import Exited
from mesh.pool.signals import PoolWatch

log = logging.getLogger(__name__)


class Launcher(Protocol):
    """Starts and stops a pool's pods (mesh.pool.local.LocalPods for `mesh up`)."""

    def start_pod(self) -> str: ...

    def stop_pod(self, pod_id: str) -> bool: ...

    def reap(self) -> list[Exited]: ...

    def running(self) -> set[str]: ...

    def stopping(self) -> set[str]: ...


class PoolMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.desired = Gauge(
            "mesh_pool_desired_pods", "Pods the pool-size policy wants, per pool", ["pool"],
            registry=registry,
        )  # fmt: skip
        self.pods = Gauge(
            "mesh_pool_pods", "Pods registered and serving (not draining), per pool", ["pool"],
            registry=registry,
        )  # fmt: skip
        self.starting = Gauge(
            "mesh_pool_starting_pods", "Pods started and not registered yet, per pool", ["pool"],
            registry=registry,
        )  # fmt: skip
        self.held = Gauge(
            "mesh_pool_held_requests",
            "Requests routers hold for the pool (from their demand records)", ["pool"],
            registry=registry,
        )  # fmt: skip
        self.scaled = Counter(
            "mesh_pool_scale_events", "Pods started (up) and drained (down), per pool",
            ["pool", "direction"], registry=registry,
        )  # fmt: skip
        self.exits = Counter(
            "mesh_pool_pod_exits", "Pods that exited unasked, by reason (recycled, failed)",
            ["pool", "reason"], registry=registry,
        )  # fmt: skip


class PoolController:
    def __init__(
        self,
        store: KeyValueStore,
        root: str,
        policy: PoolPolicy,
        launcher: Launcher,
        *,
        pool: str = DEFAULT_POOL,
        interval: float = 1.0,
        metrics: PoolMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._root = root
        self.policy = policy
        self._launcher = launcher
        self.pool = pool
        self._interval = interval
        self._metrics = metrics
        self._clock = clock
        self.mirror = Mirror(store, Keys(root))
        self._watch = PoolWatch(self.mirror, pool)
        self._state = PoolState()
        self._demand: list[DemandRecord] = []
        self._task: asyncio.Task[None] | None = None
        self.last: PoolDecision | None = None

    async def start(self) -> None:
        await self.mirror.start(timeout=60)
        self.mirror.subscribe(lambda changes: self._watch.observe(changes, self._clock()))
        await self.step()  # the gauges hold the pool's size from the start
        self._task = asyncio.create_task(self._run(), name="mesh-pool-controller")

    async def _run(self) -> None:
        while True:
            try:
                await self.step()
            except Exception:
                log.exception("pool %s: a step failed", self.pool)
            await asyncio.sleep(self._interval)

    async def step(self) -> PoolDecision:
        """One look at the pool and what it needs done; the decision taken."""
        for gone in self._launcher.reap():
            if gone.asked:
                log.info("pool %s: %s drained and left", self.pool, gone.pod_id)
                continue
            reason = "recycled" if gone.recycled else "failed"
            if self._metrics is not None:
                self._metrics.exits.labels(self.pool, reason).inc()
            log.warning(
                "pool %s: %s exited with status %d (%s); the pool replaces it if it needs it",
                self.pool,
                gone.pod_id,
                gone.returncode,
                reason,
            )
        try:
            self._demand = await read_demand(self._store, self._root)
        except MeshError as exc:
            log.warning("pool %s: cannot read demand (%s); using the last read", self.pool, exc)
        signals = self._watch.signals(self._clock(), self._demand)
        running = self._launcher.running()
        # Only pods this launcher runs count: a record left by a pod that died lingers until
        # its lease expires, and must not hold a place.
        pods = tuple(p for p in signals.pods if p.pod_id in running)
        signals = dataclasses.replace(signals, pods=pods)
        decision = decide_pool(self.policy, signals, self._state)
        self._state = decision.state
        self.last = decision
        serving = [p for p in pods if not p.draining]
        starting = running - {p.pod_id for p in pods}
        if decision.desired > len(serving):
            for _ in range(decision.desired - len(serving) - len(starting)):
                pod_id = self._launcher.start_pod()
                starting.add(pod_id)
                if self._metrics is not None:
                    self._metrics.scaled.labels(self.pool, "up").inc()
                log.info(
                    "pool %s: %d pods wanted (%s; needs %s): started %s",
                    self.pool,
                    decision.desired,
                    decision.reason,
                    decision.needs,
                    pod_id,
                )
        elif (
            decision.remove is not None
            and not self._launcher.stopping()
            and not starting
            and self._launcher.stop_pod(decision.remove)
        ):
            if self._metrics is not None:
                self._metrics.scaled.labels(self.pool, "down").inc()
            log.info(
                "pool %s: %d pods wanted (needs %s): draining %s%s",
                self.pool,
                decision.desired,
                decision.needs,
                decision.remove,
                f", handing off {', '.join(decision.handoff)}" if decision.handoff else "",
            )
        if self._metrics is not None:
            self._metrics.desired.labels(self.pool).set(decision.desired)
            self._metrics.pods.labels(self.pool).set(len(serving))
            self._metrics.starting.labels(self.pool).set(len(starting))
            self._metrics.held.labels(self.pool).set(signals.held)
        return decision

    async def aclose(self) -> None:
        await stop_task(self._task, "the pool controller")
        with contextlib.suppress(MeshError):
            await self.mirror.aclose()


class ControllerThread:
    """A PoolController on an event loop of its own, for a synchronous caller (`mesh up`).

    `start()` returns once the controller follows the mesh (or raises what stopped it);
    `stop()` ends it and waits.
    """

    def __init__(self, build: Callable[[], tuple[KeyValueStore, PoolController]]) -> None:
        self._build = build
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="mesh-pool", daemon=True)
        self.controller: PoolController | None = None

    def start(self, timeout: float = 60) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the pool controller did not start")
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start(), or logged once running
            if not self._ready.is_set():
                self._error = exc
                self._ready.set()
            else:
                log.exception("the pool controller stopped")

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        store, controller = self._build()
        try:
            await controller.start()
            self.controller = controller
            self._ready.set()
            await self._stop.wait()
        finally:
            await controller.aclose()
            with contextlib.suppress(MeshError):
                await store.aclose()

    def stop(self, timeout: float = 30) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # its loop already ended
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread.is_alive():
            self._thread.join(timeout)
