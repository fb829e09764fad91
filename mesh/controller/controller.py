"""The Predictor controller: an informer, a work queue, and a reconcile loop.

    controller = Controller(PredictorApi(api_client, "ml"), MeshApi("mesh-router:8033"),
                            ControllerSettings(), lock=LeaseLock(api_client, "ml", "mesh", me))
    controller.start()      # threads: informer, worker, elector
    ...
    controller.stop()

The informer lists Predictors, then watches from the list's resourceVersion. A watch that ends
(the server's timeout, a dropped connection) resumes from the last resourceVersion seen, after
a backoff if it failed; a 410 Gone lists again. Every Predictor is also queued again every
`resync` seconds, which is how the controller notices what the Kubernetes API cannot tell it:
a model unloaded, a load that failed, or etcd losing its data (it registers everything again,
with no manual step).

Reconciling one Predictor (only the elected leader does; the others keep their cache warm):

1. deleted (deletionTimestamp set): delete its vmodel, unregister its models, remove the
   finalizer;
2. add the finalizer before anything reaches the mesh, so a deletion always cleans up;
3. parse the spec into a model id that carries a hash of the spec (mesh.controller.predictor);
   register that model if the mesh does not know it and start its load; point the vmodel named
   after the Predictor at it (the router loads the new model before it switches, so a spec
   change fails no request); unregister this Predictor's models that nothing points to;
4. write the status subresource from the mesh's view, only when it changed;
5. while something is in progress, look again in `poll` seconds.

A Predictor and an InferenceService of one name would be one vmodel: the controllers of the two
kinds contend (`contend_with`), and where the other kind's object holds the name
(mesh.controller.kinds.holds_name) this one is refused: no finalizer, nothing in the mesh, a
status with reason NameConflict, and no clean-up of the name when it goes. A change to either
queues the name on both, so the refused one takes the name over once the holder is gone.

A failed reconcile is retried with a per-Predictor exponential backoff; a 409 on a write means
the cached object was stale and is retried at once with the newer one.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mesh.controller import predictor as pr
from mesh.controller import runtimes as rt
from mesh.controller.kinds import PREDICTOR, ResourceKind, holds_name
from mesh.controller.kube import (
    FINALIZER,
    Conflict,
    EventRecorder,
    Gone,
    KubeError,
    LeaseLock,
    NotFound,
    PredictorApi,
    now_rfc3339,
)
from mesh.controller.meshapi import MeshApi
from mesh.controller.metrics import ControllerMetrics
from mesh.controller.pools import Pools
from mesh.errors import MeshError
from mesh.retry import Backoff

log = logging.getLogger(__name__)

_SWEEP = ""  # the queue key of the periodic sweep for orphaned models (no Predictor is "")


@dataclass(frozen=True, slots=True)
class ControllerPolicy:
    resync: float = 60.0  # seconds between full resyncs
    poll: float = 2.0  # seconds between looks at a Predictor whose model is on its way
    watch_timeout: int = 300  # seconds the API server keeps one watch open
    lease_renew: float = 2.0  # seconds between Lease renewals
    grpc_endpoint: str = ""
    http_endpoint: str = ""
    drain_poll: float = 5.0  # seconds between looks for draining pods (their Events)


class WorkQueue:
    """Keys to reconcile, each at most once in the queue, some not before a given time."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._closed = False

    def add(self, key: str, after: float = 0.0) -> None:
        at = time.monotonic() + after
        with self._cond:
            if key in self._due and self._due[key] <= at:
                return  # already due sooner
            self._due[key] = at
            heapq.heappush(self._heap, (at, key))
            self._cond.notify()

    def get(self, timeout: float | None = None) -> str | None:
        """The next due key; None when closed or after `timeout` seconds with none due."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
                    heapq.heappop(self._heap)  # superseded entry
                if self._heap and self._heap[0][0] <= now:
                    _, key = heapq.heappop(self._heap)
                    del self._due[key]
                    return key
                wait = self._heap[0][0] - now if self._heap else None
                if end is not None:
                    left = end - now
                    if left <= 0:
                        return None
                    wait = left if wait is None else min(wait, left)
                self._cond.wait(wait)
            return None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._due)


class Controller:
    def __init__(
        self,
        predictors: PredictorApi,
        mesh: MeshApi,
        policy: ControllerPolicy | None = None,
        lock: LeaseLock | None = None,
        metrics: ControllerMetrics | None = None,
        clock: Callable[[], str] = now_rfc3339,
        events: EventRecorder | None = None,
        kind: ResourceKind = PREDICTOR,
        pools: Pools | None = None,
        run_pools: bool = True,
    ) -> None:
        self._api = predictors
        self.kind = kind
        # The ServingRuntimes (pools) a model is placed on; None or none listed: any pod.
        self.pools = pools
        self._run_pools_thread = run_pools and pools is not None
        self._events = events
        self._mesh = mesh
        self.policy = policy or ControllerPolicy()
        self._lock = lock
        self._metrics = metrics
        self._clock = clock
        self._cache: dict[str, dict[str, Any]] = {}
        self._cache_lock = threading.Lock()
        self.queue = WorkQueue()
        self._stop = threading.Event()
        self.synced = threading.Event()
        self.tried = threading.Event()  # set once a first list has been tried
        self._leading = threading.Event()
        if lock is None:
            self._leading.set()  # a single replica leads without a Lease
        self._failures: dict[str, int] = {}
        # Models a Predictor pointed to before its spec changed: unregistered once unused.
        self._retired: dict[str, set[str]] = {}
        self._threads: list[threading.Thread] = []
        # The controllers of the other kinds in this namespace: one name space of vmodels.
        self._rivals: list[Controller] = []

    @property
    def namespace(self) -> str:
        return self._api.namespace

    def contend_with(self, other: Controller) -> None:
        """Share the namespace's vmodel names with the controller of another kind (both ways):
        of two objects of one name, only the one that holds it reaches the mesh."""
        if other is self or other in self._rivals:
            return
        self._rivals.append(other)
        other._rivals.append(self)

    @property
    def is_leader(self) -> bool:
        return self._leading.is_set()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        targets: list[tuple[str, Callable[[], None]]] = [
            ("informer", self._inform),
            ("worker", self._work),
            ("resync", self._resync),
        ]
        if self._lock is not None:
            targets.append(("elector", self._elect))
        if self._events is not None:
            targets.append(("drains", self._watch_drains))
        if self._run_pools_thread:
            targets.append(("pools", self._run_pools))
        for name, target in targets:
            thread = threading.Thread(target=target, name=f"mesh-controller-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.queue.close()
        for thread in self._threads:
            if thread.name.endswith("informer"):
                continue  # blocked in a watch read at worst; a daemon, it dies with us
            thread.join(timeout)
        if self._lock is not None and self._leading.is_set():
            self._lock.release()
        self._leading.clear()

    # -- the informer --------------------------------------------------------------------------

    def _inform(self) -> None:
        backoff = Backoff(0.5, 30.0)
        failures = 0
        resource_version = ""
        while not self._stop.is_set():
            try:
                if not resource_version:
                    try:
                        items, resource_version = self._api.list_all()
                    except KubeError:
                        # Could not list (no such CRD here, no right to read it, its API
                        # failing): a rival's reconciles wait for a first try and no longer,
                        # and take this cache (empty, or as last listed) as what there is.
                        self.tried.set()
                        raise
                    self._replace_cache(items)
                    self.tried.set()
                    self.synced.set()
                    failures = 0
                opened = time.monotonic()
                for event in self._api.watch(resource_version, self.policy.watch_timeout):
                    if self._stop.is_set():
                        return
                    resource_version = event.resource_version
                    if event.type != "BOOKMARK":
                        self._observe(event.type, event.object)
                failures = 0  # the server ended the stream: resume from where it was
                if time.monotonic() - opened < 1.0:
                    self._stop.wait(0.5)  # a server that ends every watch at once: no spin
            except Gone as exc:
                log.info("predictor watch expired (%s): listing again", exc)
                self._count_restart("gone")
                resource_version = ""
            except KubeError as exc:
                failures += 1
                delay = backoff.delay(failures)
                log.warning("predictor watch: %s; resuming in %.1f s", exc, delay)
                self._count_restart("error")
                self._stop.wait(delay)

    def _replace_cache(self, items: list[dict[str, Any]]) -> None:
        with self._cache_lock:
            before = set(self._cache)
            self._cache = {i["metadata"]["name"]: i for i in items}
            names = set(self._cache) | before
        for name in names:
            self._queue_everywhere(name)

    def _queue_everywhere(self, name: str) -> None:
        """Queue `name` here and on the rivals: a change to one object of the name can change
        which of them holds it."""
        self.queue.add(name)
        for rival in self._rivals:
            rival.queue.add(name)

    def _observe(self, kind: str, obj: Mapping[str, Any]) -> None:
        name = obj["metadata"]["name"]
        with self._cache_lock:
            if kind == "DELETED":
                self._cache.pop(name, None)
            else:
                self._cache[name] = dict(obj)
        self._queue_everywhere(name)

    def _remember(self, obj: Mapping[str, Any]) -> None:
        """A newer object from one of our writes: keep it unless the watch brought a newer."""
        name = obj["metadata"]["name"]
        with self._cache_lock:
            cached = self._cache.get(name)
            if cached is None or _rv(cached) <= _rv(obj):
                self._cache[name] = dict(obj)

    def get(self, name: str) -> dict[str, Any] | None:
        with self._cache_lock:
            return self._cache.get(name)

    def names(self) -> list[str]:
        with self._cache_lock:
            return sorted(self._cache)

    def _resync(self) -> None:
        while not self._stop.wait(self.policy.resync):
            for name in self.names():
                self.queue.add(name)
            self.queue.add(_SWEEP)

    # -- leader election -----------------------------------------------------------------------

    def _elect(self) -> None:
        assert self._lock is not None
        last_renewed = 0.0
        while not self._stop.is_set():
            try:
                held = self._lock.try_acquire_or_renew()
            except KubeError as exc:
                log.warning("leader election: %s", exc)
                held = False
                if time.monotonic() - last_renewed < self._lock.duration:
                    held = self._leading.is_set()  # keep leading until the Lease may expire
            if held:
                last_renewed = time.monotonic()
                if not self._leading.is_set():
                    log.info("leading as %s", self._lock.identity)
                    self._leading.set()
                    for name in self.names():  # catch up on what the last leader left
                        self.queue.add(name)
            elif self._leading.is_set():
                log.warning("lost the lease %s: no longer leading", self._lock.name)
                self._leading.clear()
            if self._metrics is not None:
                self._metrics.leader.set(1 if self._leading.is_set() else 0)
            self._stop.wait(self.policy.lease_renew)

    # -- the worker ----------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stop.is_set():
            key = self.queue.get(timeout=1.0)
            if key is None:
                continue
            if not self._leading.is_set():
                continue  # a standby: whoever leads next queues every Predictor at once
            self.process(key)

    def process(self, key: str) -> None:
        """Reconcile one key, requeueing it as the outcome asks (public for tests)."""
        started = time.perf_counter()
        result = "ok"
        try:
            again = None
            if key == _SWEEP:
                self.sweep()
            else:
                again = self.reconcile(key)
            self._failures.pop(key, None)
            if again is not None:
                self.queue.add(key, after=again)
        except Conflict as exc:
            result = "conflict"
            log.info("predictor %s: %s; again with the newer object", key, exc)
            self.queue.add(key, after=0.05)  # time for the watch to bring the newer object
        except (KubeError, MeshError) as exc:
            result = "error"
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            delay = Backoff(0.5, 60.0).delay(failures)
            log.warning("predictor %s: %s; again in %.1f s", key or "sweep", exc, delay)
            self.queue.add(key, after=delay)
        except Exception:
            result = "error"
            log.exception("predictor %s: reconcile failed", key)
            self.queue.add(key, after=30.0)
        if self._metrics is not None:
            self._metrics.reconciles.labels(result).inc()
            self._metrics.reconcile_seconds.observe(time.perf_counter() - started)

    def reconcile(self, name: str) -> float | None:
        """Bring the mesh and the status in line with the Predictor; seconds until the next
        look, or None to wait for a change or the resync."""
        obj = self.get(name)
        if obj is None:
            return None  # gone for good: the finalizer has done its work
        metadata = obj["metadata"]
        finalizers = list(metadata.get("finalizers") or [])
        if any(not r.tried.is_set() for r in self._rivals):
            return self.policy.poll  # who holds the name is not known before they have listed
        holder = self._holder(name, obj)
        if holder is not None:
            self._refuse(obj, finalizers, holder)
            return None  # queued again when the holder changes or goes
        if not self.kind.ours(obj):
            if FINALIZER in finalizers:  # it was ours (its annotation went): let it go
                self._clean_up(name)
                finalizers.remove(FINALIZER)
                with contextlib.suppress(NotFound):
                    self._api.set_finalizers(obj, finalizers)
            return None  # not ours (an InferenceService KServe serves): left alone
        if metadata.get("deletionTimestamp"):
            if FINALIZER in finalizers:
                self._clean_up(name)
                finalizers.remove(FINALIZER)
                with contextlib.suppress(NotFound):  # removed by someone else meanwhile
                    self._api.set_finalizers(obj, finalizers)
                log.info("predictor %s deleted: unregistered from the mesh", name)
            return None
        if FINALIZER not in finalizers:
            obj = self._api.set_finalizers(obj, [*finalizers, FINALIZER])
            self._remember(obj)
        try:
            spec: pr.PredictorSpec | pr.InvalidSpec = self._parse(obj)
        except pr.InvalidSpec as exc:
            spec = exc
        vmodel = self._mesh.vmodel(name)
        models: dict[str, pr.ModelView] = {}
        if isinstance(spec, pr.PredictorSpec):
            vmodel = self._apply(spec, vmodel, models, obj)
        if vmodel is not None:
            for model_id in {vmodel.active, vmodel.target} - set(models):
                view = self._mesh.model(model_id)
                if view is not None:
                    models[model_id] = view
        status = self._write(obj, spec, vmodel, models)
        busy = status.get("transitionStatus") == "InProgress" or pr.LOADING in (
            status.get("activeModelState"),
            status.get("targetModelState"),
        )
        return self.policy.poll if busy else None

    def _holder(
        self, name: str, obj: Mapping[str, Any]
    ) -> tuple[ResourceKind, Mapping[str, Any]] | None:
        """The other kind's object of this name, with its kind, when it holds the name (None:
        this object holds it, or has no rival)."""
        if not self.kind.contends(obj):
            return None
        for rival in self._rivals:
            other = rival.get(name)
            if other is None or not rival.kind.contends(other):
                continue
            if holds_name(other, rival.kind, obj, self.kind):
                return rival.kind, other
        return None

    def _refuse(
        self,
        obj: Mapping[str, Any],
        finalizers: list[str],
        holder: tuple[ResourceKind, Mapping[str, Any]],
    ) -> None:
        """This object shares its name with the holder's: it gets nothing in the mesh and no
        finalizer (its deletion must not delete the holder's vmodel), and, if it is ours and
        not going, a status that says why."""
        name = obj["metadata"]["name"]
        if FINALIZER in finalizers:  # written before the rule, or while the name was free
            finalizers.remove(FINALIZER)
            with contextlib.suppress(NotFound):
                obj = self._api.set_finalizers(obj, finalizers)
                self._remember(obj)
        if not self.kind.ours(obj) or obj["metadata"].get("deletionTimestamp"):
            return
        kind, other = holder
        title = self.kind.title or self.kind.name
        since = (other.get("metadata") or {}).get("creationTimestamp", "")
        problem = pr.InvalidSpec(
            f"the {kind.title or kind.name} {name} (created {since}) already has the name "
            f"{name!r} in the mesh, and clients asking for {name!r} reach its model: rename "
            f"this {title}, or delete the {kind.title or kind.name} (this one then takes the "
            "name over)",
            reason="NameConflict",
        )
        self._write(obj, problem, None, {})

    def _write(
        self,
        obj: Mapping[str, Any],
        spec: pr.PredictorSpec | pr.InvalidSpec,
        vmodel: pr.VModelView | None,
        models: Mapping[str, pr.ModelView],
    ) -> dict[str, Any]:
        """Write the status from the mesh's view, only when it changed, with its Events; the
        Predictor-shaped status."""
        name = obj["metadata"]["name"]
        written = obj.get("status") or {}
        previous = self.kind.previous(written)
        now = self._clock()
        status = pr.status(
            spec, vmodel, models, previous, now,
            self.policy.grpc_endpoint, self.policy.http_endpoint,
        )  # fmt: skip
        rendered = self.kind.render(status, obj, now)
        if rendered != written:
            self._remember(self._api.write_status(name, rendered))
            if self._metrics is not None:
                self._metrics.status_writes.inc()
            if self._events is not None:
                for event in pr.events(previous, status):
                    self._events.record(obj, event.type, event.reason, event.message)
        return status

    def _parse(self, obj: Mapping[str, Any]) -> pr.PredictorSpec:
        """The object as the mesh registers it, on the pool its runtime chooses when the
        namespace has ServingRuntimes (InvalidSpec with KServe's reasons otherwise)."""
        resource = self.kind.as_predictor(obj)
        runtimes: list[rt.RuntimeSpec] = []
        if self.pools is not None:
            # Not listed yet (a controller just started): list now, or a model would be
            # registered for any pod and moved to its pool a moment later.
            runtimes = self.pools.runtimes() if self.pools.synced.is_set() else self.pools.refresh()
            # Only ModelMesh runtimes count: KServe's single-model runtimes (multiModel unset
            # or false, as KServe installs its ClusterServingRuntimes) make no pool, and must
            # not take a namespace off "any pod of the model's runtime".
            runtimes = [r for r in runtimes if r.multi_model]
        known = {r.name for r in runtimes}
        spec = pr.parse(resource, known)
        if not runtimes:
            return spec
        chosen = rt.choose_runtime(runtimes, spec.model_type, spec.version, spec.runtime)
        return pr.parse(resource, known, pool=chosen.name)

    def _apply(
        self,
        spec: pr.PredictorSpec,
        vmodel: pr.VModelView | None,
        seen: dict[str, pr.ModelView],
        obj: Mapping[str, Any],
    ) -> pr.VModelView | None:
        """Register, point the vmodel, retire; the model's view goes into `seen` when it is
        current (not when it was just registered: its state is changing)."""
        name = spec.name
        view = self._mesh.model(spec.model_id)
        if view is None:
            log.info("predictor %s: registering model %s", name, spec.model_id)
            self._mesh.register(spec)
            self._mesh.start_loading(spec.model_id)
        else:
            seen[spec.model_id] = view
        if vmodel is None or vmodel.target != spec.model_id:
            if vmodel is not None:
                log.info("predictor %s: %s -> %s", name, vmodel.target, spec.model_id)
                self._retired.setdefault(name, set()).update({vmodel.active, vmodel.target})
            self._mesh.set_vmodel(name, spec.model_id)
            vmodel = self._mesh.vmodel(name)
        if vmodel is not None and vmodel.transition == "UP_TO_DATE":
            replaced = sorted(self._retired.pop(name, set()) - {vmodel.active})
            if replaced and self._events is not None:
                self._events.record(
                    obj, pr.NORMAL, "TransitionDone",
                    f"clients now reach {vmodel.active} (was {', '.join(replaced)})",
                )  # fmt: skip
            for old in replaced:
                log.info("predictor %s: unregistering %s, replaced", name, old)
                self._mesh.unregister(old)
        return vmodel

    def _clean_up(self, name: str) -> None:
        self._mesh.delete_vmodel(name)
        owned = {m for m in self._mesh.model_ids() if pr.owned_by(m, name)}
        for model_id in sorted(owned | self._retired.pop(name, set())):
            self._mesh.unregister(model_id)

    def sweep(self) -> None:
        """Unregister models this controller made for a Predictor that no longer points to
        them (a transition it did not see finish, a restart in between)."""
        names = set(self.names())
        in_use: dict[str, set[str]] = {}
        for model_id in self._mesh.model_ids():
            owner = model_id.rpartition("-")[0]
            if owner in names and pr.owned_by(model_id, owner):
                in_use.setdefault(owner, set()).add(model_id)
        for owner, model_ids in sorted(in_use.items()):
            obj = self.get(owner)
            if obj is None or not self.kind.contends(obj) or self._holder(owner, obj):
                # Not ours (KServe's own InferenceService of a Predictor's name), or the name
                # is another kind's: that kind's controller sweeps it, in the thread that
                # registers its models (a model registered and not yet pointed at is no orphan).
                continue
            vmodel = self._mesh.vmodel(owner)
            if vmodel is None or vmodel.transition != "UP_TO_DATE":
                continue
            for model_id in sorted(model_ids - {vmodel.active, vmodel.target}):
                log.info("predictor %s: unregistering %s, no longer used", owner, model_id)
                self._mesh.unregister(model_id)

    def _watch_drains(self) -> None:
        """An Event on each pod that starts draining (the leader's job, as reconciling is)."""
        assert self._events is not None
        reported: set[str] = set()
        while not self._stop.wait(self.policy.drain_poll):
            if not self._leading.is_set():
                continue
            try:
                draining = self._mesh.draining_pods()
            except MeshError as exc:
                log.debug("draining pods: %s", exc)
                continue
            for pod_id, models in sorted(draining.items()):
                if pod_id in reported:
                    continue
                pod = {"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": pod_id, "namespace": self.namespace}}  # fmt: skip
                self._events.record(
                    pod, pr.NORMAL, "Draining",
                    f"pod {pod_id} is draining: its {models} models load on other pods first",
                )  # fmt: skip
            reported = set(draining)

    def _run_pools(self) -> None:
        assert self.pools is not None
        self.pools.run(self._stop, self._leading.is_set)

    def _count_restart(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.watch_restarts.labels(reason).inc()


def _rv(obj: Mapping[str, Any]) -> int:
    try:
        return int(obj["metadata"]["resourceVersion"])
    except (KeyError, ValueError, TypeError):
        return 0
