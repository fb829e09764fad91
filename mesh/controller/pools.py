"""Pools on Kubernetes: one Deployment of mesh pods per ServingRuntime, sized by the pool policy.

    pools = Pools(PoolApi(api_client, "ml"), MeshApi("mesh-router:8033"), PoolSettings())
    pools.refresh()        # any replica: the runtimes, for choosing a model's pool
    pools.reconcile()      # the leader: Deployments in line, each scaled to the policy's size

Every `interval` seconds the leader lists the ServingRuntimes of its namespace and the
ClusterServingRuntimes (mesh.controller.runtimes), creates the Deployment of each runtime the
mesh can serve (owned by the runtime, so deleting the runtime deletes its pods), brings an
existing one's pod template in line when the runtime changed (never its replicas), and sizes
each pool: the routers' management API reports every pod (its pool label, room, models with
their sizes and last use, requests in flight, loads per second), `decide_pool`
(mesh.placement.pool) turns that into a number of pods, and the controller writes it through
the Deployment's scale subresource, with the scale's resourceVersion (a 409 means someone else
wrote it: the next round reads it again). Before a scale-down the pod the policy chose (the one
whose sole copies in use fit on the others) gets the lowest
`controller.kubernetes.io/pod-deletion-cost`, so the ReplicaSet removes that one; a mesh pod
drains on SIGTERM and hands its models off first (docs/kubernetes.md).

The leader writes each namespaced ServingRuntime's status (mesh.controller.runtimes.
runtime_status): its Deployment, the pods wanted and ready, and a Ready condition, only when it
changed. ClusterServingRuntimes get none: one object has a pool in every namespace a controller
runs in, and a namespace's controller may only read it. Runtimes that are not ModelMesh
runtimes (multiModel false or unset: KServe's) are not ours and get no status.

Failure modes: a runtime whose spec or annotations do not parse gets a Warning Event, a status
saying why, and no change to its pool; the management API unreachable means no resize this
round (the pool keeps its size, the status shows it); the API server failing means the round
is retried at the next interval; a status that cannot be written is logged and tried again at
the next change.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh.controller import runtimes as rt
from mesh.controller.kube import Conflict, EventRecorder, KubeError, NotFound, PoolApi
from mesh.controller.meshapi import MeshApi, PoolsView
from mesh.controller.metrics import ControllerMetrics
from mesh.controller.predictor import WARNING, InvalidSpec
from mesh.errors import MeshError
from mesh.placement.pool import PoolPolicy, PoolSignals, PoolState, decide_pool

log = logging.getLogger(__name__)

# The Deployment's annotation holding a digest of the labels and pod template the controller
# last wrote: what a round compares, since the API server fills defaults into what it stores
# (fieldRef.apiVersion, resourceFieldRef.divisor, canonical quantities) and the stored template
# never equals the wanted one field by field.
TEMPLATE_HASH = "mesh.serving.kserve.io/template-hash"


@dataclass(frozen=True, slots=True)
class PoolSettings:
    interval: float = 10.0  # seconds between rounds
    min_pods: int = 1  # bounds of a runtime that sets none (its annotations override them)
    max_pods: int = 4
    window: float = 300.0
    headroom: float = 0.2
    lru_age_floor: float = 60.0
    load_share: float = 0.5
    in_flight_per_pod: float = 32.0
    scale_down_after: float = 300.0
    load_seconds: float = 10.0  # what a load takes, for the loads need
    pod_capacity: int = 4 * 2**30  # a new pod's room, for a pool with no pod to ask
    template: rt.PodTemplate = field(default_factory=rt.PodTemplate)


class Pools:
    def __init__(
        self,
        api: PoolApi,
        mesh: MeshApi,
        settings: PoolSettings | None = None,
        events: EventRecorder | None = None,
        metrics: ControllerMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._api = api
        self._mesh = mesh
        self.settings = settings or PoolSettings()
        self._events = events
        self._metrics = metrics
        self._clock = clock
        self._lock = threading.Lock()
        self._runtimes: list[rt.RuntimeSpec] = []
        self._states: dict[str, PoolState] = {}
        self._reported: dict[str, str] = {}  # runtime -> the last problem reported on it
        # This namespace's ServingRuntimes as last listed, and those that did not parse (with
        # why): what their status is written from.
        self._listed: dict[str, Mapping[str, Any]] = {}
        self._unparsed: dict[str, str] = {}
        self._status_written: dict[str, dict[str, Any]] = {}  # runtime -> the last one sent
        # Set once the runtimes have been listed: before that, "no runtimes" means "not known".
        self.synced = threading.Event()

    @property
    def namespace(self) -> str:
        return self._api.namespace

    def runtimes(self) -> list[rt.RuntimeSpec]:
        """The runtimes this namespace sees, as last listed (empty: no pools, any pod)."""
        with self._lock:
            return list(self._runtimes)

    def refresh(self) -> list[rt.RuntimeSpec]:
        own, cluster = self._api.list_runtimes()
        unparsed: dict[str, str] = {}
        parsed = [self._parse(o, False, unparsed) for o in own] + [
            self._parse(o, True, {}) for o in cluster
        ]
        found = rt.effective(
            [r for r in parsed if r is not None and not r.cluster],
            [r for r in parsed if r is not None and r.cluster],
        )
        with self._lock:
            self._runtimes = found
            self._listed = {str(o["metadata"]["name"]): o for o in own}
            self._unparsed = unparsed
        self.synced.set()
        return found

    def _parse(
        self, obj: Mapping[str, Any], cluster: bool, unparsed: dict[str, str]
    ) -> rt.RuntimeSpec | None:
        try:
            return rt.parse_runtime(obj, cluster)
        except InvalidSpec as exc:
            self._report(obj, str(exc))
            unparsed[str((obj.get("metadata") or {}).get("name", ""))] = str(exc)
            return None

    def _report(self, obj: Mapping[str, Any], problem: str) -> None:
        name = str((obj.get("metadata") or {}).get("name", ""))
        if self._reported.get(name) == problem:
            return
        self._reported[name] = problem
        log.warning("runtime %s: %s", name, problem)
        if self._events is not None:
            self._events.record(obj, WARNING, "InvalidRuntime", problem)

    def reconcile(self) -> None:
        """One round (the leader's): Deployments in line with the runtimes, each sized."""
        runtimes = self.refresh()
        view: PoolsView | None
        try:
            view = self._mesh.pools()
        except MeshError as exc:
            log.info("pools: management API: %s; no resize this round", exc)
            view = None
        for runtime in runtimes:
            try:
                if not runtime.serves:
                    ready = self._switch_off(runtime)
                    self._write_status(runtime.name, runtime, 0, ready)
                    continue
                desired, ready = self._reconcile_one(runtime, view)
                self._write_status(runtime.name, runtime, desired, ready)
            except Conflict as exc:
                log.info("pool %s: %s; again next round", runtime.name, exc)
            except InvalidSpec as exc:
                self._report(_as_object(runtime, self.namespace), str(exc))
                self._write_status(runtime.name, runtime, 0, 0, str(exc))
        for name, problem in sorted(self._unparsed.items()):
            self._write_status(name, None, 0, 0, problem)

    def _write_status(
        self,
        name: str,
        runtime: rt.RuntimeSpec | None,
        desired: int,
        ready: int,
        problem: str = "",
    ) -> None:
        """The namespaced ServingRuntime's status, written when it changed. Not ours (a
        ClusterServingRuntime, or not a ModelMesh runtime): none, and one we wrote before the
        runtime stopped being ours is removed."""
        obj = self._listed.get(name)
        if obj is None or (runtime is not None and runtime.cluster):
            return  # a cluster runtime's (or one deleted since the list): not written
        written = obj.get("status") or {}
        if not bool((obj.get("spec") or {}).get("multiModel", False)):
            wanted: dict[str, Any] = {}  # KServe's runtime: its status is not ours to write
            if "deploymentName" not in written:
                return
        else:
            stamp = datetime.datetime.fromtimestamp(self._clock(), datetime.UTC)
            # Where the API server dropped the condition (a CRD that declares no such field),
            # the one sent last carries its lastTransitionTime: else it is new every round.
            previous = written if "conditions" in written else self._status_written.get(name, {})
            wanted = rt.runtime_status(
                runtime, desired, ready, previous, stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
                int((obj.get("metadata") or {}).get("generation") or 0), problem,
            )  # fmt: skip
        # The one sent last counts as written: an API server whose CRD has no such fields
        # (KServe's own declares an empty status) drops them, and must not cost a write a round.
        if wanted == written or wanted == self._status_written.get(name):
            return
        try:
            self._api.write_runtime_status(name, wanted)
        except NotFound as exc:  # deleted meanwhile, or a CRD with no status subresource
            log.info("runtime %s: status not written (%s)", name, exc)
        except KubeError as exc:
            log.warning("runtime %s: status not written (%s); again next round", name, exc)
            return
        self._status_written[name] = wanted

    def _switch_off(self, runtime: rt.RuntimeSpec) -> int:
        """A runtime that serves no more (disabled, multiModel false, no format the mesh
        loads) has no pool: the Deployment made while it served goes to zero pods (kept, so
        that switching the runtime back on brings the pool back through the usual round).
        The pods still ready (stopping)."""
        name = rt.deployment_name(runtime)
        current = self._api.deployment(name)
        labels = ((current or {}).get("metadata") or {}).get("labels") or {}
        if current is None or labels.get("app.kubernetes.io/managed-by") != rt.MANAGED_BY:
            return 0
        replicas, _, version = self._api.scale(name)
        if replicas:
            log.info("pool %s: the runtime serves no more; 0 pods", runtime.name)
            self._api.set_scale(name, 0, version)
        self._observe(runtime.name, 0, 0)
        return _ready(current)

    def _reconcile_one(self, runtime: rt.RuntimeSpec, view: PoolsView | None) -> tuple[int, int]:
        """Bring the runtime's Deployment in line and size it: (pods wanted, pods ready)."""
        s = self.settings
        bounds = runtime.bounds(s.min_pods, s.max_pods)
        name = rt.deployment_name(runtime)
        current = self._api.deployment(name)
        # A pool may go to zero: a request for it is then held by a router, which publishes
        # its demand, and the management API reports it here (`held`), bringing a pod back.
        floor = bounds.min_pods
        ceiling = max(bounds.max_pods, floor)
        wanted = _with_hash(rt.deployment(runtime, self.namespace, s.template, floor))
        if current is None:
            log.info("pool %s: creating deployment %s (%d pods)", runtime.name, name, floor)
            self._api.create_deployment(wanted)
            self._observe(runtime.name, floor, 0)
            return floor, 0
        patch = _template_patch(current, wanted)
        if patch:
            log.info("pool %s: runtime changed, updating deployment %s", runtime.name, name)
            self._api.patch_deployment(name, patch)
        if view is None:
            return int((current.get("spec") or {}).get("replicas") or 0), _ready(current)
        replicas, ready, version = self._api.scale(name)
        policy = PoolPolicy(
            min_pods=floor, max_pods=ceiling, window=s.window, headroom=s.headroom,
            lru_age_floor=s.lru_age_floor, load_share=s.load_share,
            in_flight_per_pod=s.in_flight_per_pod,
            scale_down_after=bounds.scale_down_after
            if bounds.scale_down_after is not None else s.scale_down_after,
            pod_capacity=s.pod_capacity,
        )  # fmt: skip
        members = view.pods.get(runtime.name, [])
        signals = PoolSignals(
            tuple(members),
            now=view.now,
            # Every miss of the pool costs a load on one of its pods.
            misses_per_second=sum(view.loads_per_second.get(p.pod_id, 0.0) for p in members),
            load_seconds=s.load_seconds,
            held=view.held.get(runtime.name, 0),
        )
        decision = decide_pool(policy, signals, self._states.get(runtime.name, PoolState()))
        self._states[runtime.name] = decision.state
        desired = decision.desired
        if replicas > ceiling or replicas < floor:
            desired = min(max(replicas, floor), ceiling)  # bounds changed: no cool-down
        elif len(members) < replicas and desired < replicas:
            desired = replicas  # pods still starting: do not shrink what has not joined
        marked = None
        if desired < replicas and decision.remove is not None:
            # The policy's choice (its sole copies fit elsewhere): the ReplicaSet removes it.
            self._api.mark_for_removal(decision.remove)
            marked = decision.remove  # even if it said no: the patch may have landed
        if desired != replicas:
            log.info(
                "pool %s: %d -> %d pods (%s; needs %s)",
                runtime.name, replicas, desired, decision.reason, decision.needs,
            )  # fmt: skip
            try:
                self._api.set_scale(name, desired, version)
            except KubeError:
                if marked is not None:
                    # Not removed now: a mark left behind would pick it at a later scale-down.
                    self._api.unmark(marked)
                raise
        self._observe(runtime.name, desired, ready)
        return desired, _ready(current)

    def _observe(self, pool: str, desired: int, actual: int) -> None:
        if self._metrics is not None:
            self._metrics.pool_desired.labels(pool).set(desired)
            self._metrics.pool_pods.labels(pool).set(actual)

    def run(self, stop: threading.Event, leading: Callable[[], bool]) -> None:
        """Rounds until `stop`: the leader reconciles, a standby only refreshes."""
        while not stop.is_set():
            try:
                if leading():
                    self.reconcile()
                else:
                    self.refresh()
            except KubeError as exc:
                log.warning("pools: %s; again in %.0f s", exc, self.settings.interval)
            except Exception:
                log.exception("pools: round failed")
            stop.wait(self.settings.interval)


def _ready(deployment: Mapping[str, Any]) -> int:
    """The Deployment's ready pods, as its status counts them."""
    return int((deployment.get("status") or {}).get("readyReplicas") or 0)


def _template_hash(deployment: Mapping[str, Any]) -> str:
    wanted = {
        "labels": deployment["metadata"]["labels"],
        "template": deployment["spec"]["template"],
    }
    return hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:16]


def _with_hash(deployment: dict[str, Any]) -> dict[str, Any]:
    deployment["metadata"].setdefault("annotations", {})[TEMPLATE_HASH] = _template_hash(deployment)
    return deployment


def _template_patch(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch bringing the labels, owner and pod template in line; {} when they are
    (judged by the digest of what was last written, not the stored fields: see
    TEMPLATE_HASH)."""
    patch: dict[str, Any] = {}
    meta, want_meta = current.get("metadata") or {}, wanted["metadata"]
    digest = want_meta["annotations"][TEMPLATE_HASH]
    if (meta.get("annotations") or {}).get(TEMPLATE_HASH) != digest:
        patch["metadata"] = {"labels": want_meta["labels"], "annotations": {TEMPLATE_HASH: digest}}
        patch["spec"] = {"template": wanted["spec"]["template"]}
    if not meta.get("ownerReferences"):
        patch.setdefault("metadata", {})["ownerReferences"] = want_meta["ownerReferences"]
    return patch


def _as_object(runtime: rt.RuntimeSpec, namespace: str) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": runtime.name, "uid": runtime.uid}
    if not runtime.cluster:
        metadata["namespace"] = namespace
    return {"apiVersion": f"{rt.GROUP}/{rt.VERSION}", "kind": runtime.kind, "metadata": metadata}
