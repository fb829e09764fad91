"""The Kubernetes side of the controller: Predictors and a Lease, through the official client.

The client is synchronous (urllib3), so the controller runs it in threads. Its errors are
translated here: a watch whose resourceVersion is too old raises `Gone` (relist), a write that
lost a race raises `Conflict` (read again and retry), anything else the API server or the
network does raises `KubeUnavailable` (back off, resume).

`kubernetes.watch.Watch.stream` retries once by itself after a 410 from the same stale
resourceVersion and hides the stream's end; it is always called here with `timeout_seconds`,
which turns that off, so every end and every 410 comes back to the informer to decide.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1alpha1", "predictors"
FINALIZER = "mesh.serving.kserve.io/predictor"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
REMOVE_FIRST = -1000  # below every pod's default of 0


class KubeError(Exception):
    pass


class Gone(KubeError):
    """The watch's resourceVersion is older than the API server keeps: list again."""


class Conflict(KubeError):
    """The object changed since it was read (409): read it again."""


class NotFound(KubeError):
    pass


class KubeUnavailable(KubeError):
    """The API server answered an error or could not be reached."""


def _translate(exc: Exception, what: str) -> KubeError:
    if isinstance(exc, ApiException):
        if exc.status == 410:
            return Gone(f"{what}: {exc.reason}")
        if exc.status == 409:
            return Conflict(f"{what}: {exc.reason}")
        if exc.status == 404:
            return NotFound(f"{what}: not found")
        return KubeUnavailable(f"{what}: HTTP {exc.status} {exc.reason}")
    return KubeUnavailable(f"{what}: {type(exc).__name__}: {exc}")


_ERRORS = (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError)


@dataclass(frozen=True, slots=True)
class Event:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK
    object: Mapping[str, Any]
    resource_version: str


class PredictorApi:
    """Predictors in one namespace (or, with other `version` and `plural`, another custom
    resource of the group: InferenceServices)."""

    def __init__(
        self,
        api_client: k8s.ApiClient,
        namespace: str,
        version: str = VERSION,
        plural: str = PLURAL,
    ) -> None:
        self._api: Any = k8s.CustomObjectsApi(api_client)  # its stubs type bodies as object
        self.namespace = namespace
        self.version = version
        self.plural = plural

    def list_all(self) -> tuple[list[dict[str, Any]], str]:
        """Every Predictor, and the resourceVersion to watch from."""
        try:
            result = self._api.list_namespaced_custom_object(
                GROUP, self.version, self.namespace, self.plural, _request_timeout=30
            )
        except _ERRORS as exc:
            raise _translate(exc, f"list {self.plural} in {self.namespace}") from exc
        return list(result.get("items", [])), str(result["metadata"]["resourceVersion"])

    def watch(self, resource_version: str, timeout: int) -> Iterator[Event]:
        """Changes after `resource_version`, until the server ends the stream (`timeout`)."""
        watcher = k8s_watch.Watch()  # type: ignore[no-untyped-call]
        stream = watcher.stream(  # type: ignore[no-untyped-call]
            self._api.list_namespaced_custom_object,
            GROUP, self.version, self.namespace, self.plural,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            # A dead connection must not hang the informer: no byte for this long ends it.
            _request_timeout=(10, timeout + 15),
        )  # fmt: skip
        try:
            for raw in stream:
                obj = raw["raw_object"] if "raw_object" in raw else raw["object"]
                rv = str((obj.get("metadata") or {}).get("resourceVersion", resource_version))
                yield Event(raw["type"], obj, rv)
        except _ERRORS as exc:
            raise _translate(exc, f"watch {self.plural} in {self.namespace}") from exc
        finally:
            watcher.stop()  # type: ignore[no-untyped-call]

    def set_finalizers(self, obj: Mapping[str, Any], finalizers: list[str]) -> dict[str, Any]:
        """Write the finalizers if the object is still the one read (409 otherwise)."""
        metadata = obj["metadata"]
        patch = {
            "metadata": {"finalizers": finalizers, "resourceVersion": metadata["resourceVersion"]}
        }
        try:
            result: dict[str, Any] = self._api.patch_namespaced_custom_object(
                GROUP, self.version, self.namespace, self.plural, metadata["name"], patch,
                _request_timeout=30,
            )  # fmt: skip
        except _ERRORS as exc:
            raise _translate(exc, f"finalizers of {self.plural} {metadata['name']}") from exc
        return result

    def write_status(self, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        """Replace the status subresource as a whole (a JSON patch: keys gone are removed)."""
        patch = [{"op": "add", "path": "/status", "value": dict(status)}]
        try:
            result: dict[str, Any] = self._api.patch_namespaced_custom_object_status(
                GROUP, self.version, self.namespace, self.plural, name, patch,
                _content_type="application/json-patch+json", _request_timeout=30,
            )  # fmt: skip
        except _ERRORS as exc:
            raise _translate(exc, f"status of {self.plural} {name}") from exc
        return result


class PoolApi:
    """ServingRuntimes (this namespace's and the cluster's) and the pools' Deployments, with
    their scale subresource.

    A cluster without the runtime CRDs (or an RBAC rule that hides them) has no runtimes: the
    controller then runs no pools and places models as before (any pod of their runtime).
    """

    def __init__(self, api_client: k8s.ApiClient, namespace: str) -> None:
        self._custom: Any = k8s.CustomObjectsApi(api_client)
        self._apps: Any = k8s.AppsV1Api(api_client)
        self._core: Any = k8s.CoreV1Api(api_client)
        self.namespace = namespace

    def list_runtimes(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(this namespace's ServingRuntimes, the ClusterServingRuntimes)."""
        own = self._list(lambda: self._custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "servingruntimes", _request_timeout=30,
        ), "servingruntimes")  # fmt: skip
        cluster = self._list(lambda: self._custom.list_cluster_custom_object(
            GROUP, VERSION, "clusterservingruntimes", _request_timeout=30,
        ), "clusterservingruntimes")  # fmt: skip
        return own, cluster

    def _list(self, call: Any, what: str) -> list[dict[str, Any]]:
        try:
            return list(call().get("items", []))
        except ApiException as exc:
            if exc.status in (403, 404):
                return []  # no such CRD here, or not ours to read
            raise _translate(exc, f"list {what}") from exc
        except _ERRORS as exc:
            raise _translate(exc, f"list {what}") from exc

    def deployment(self, name: str) -> dict[str, Any] | None:
        try:
            result = self._apps.read_namespaced_deployment(
                name, self.namespace, _request_timeout=30, _preload_content=False
            )
            body: dict[str, Any] = json.loads(result.data)
            return body
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _translate(exc, f"deployment {name}") from exc
        except _ERRORS as exc:
            raise _translate(exc, f"deployment {name}") from exc

    def create_deployment(self, body: Mapping[str, Any]) -> None:
        try:
            self._apps.create_namespaced_deployment(self.namespace, dict(body), _request_timeout=30)
        except _ERRORS as exc:
            raise _translate(exc, f"create deployment {body['metadata']['name']}") from exc

    def patch_deployment(self, name: str, patch: Mapping[str, Any]) -> None:
        """A merge patch (the pod template and labels; never the replicas, which move only
        through the scale subresource)."""
        try:
            self._apps.patch_namespaced_deployment(
                name, self.namespace, dict(patch), _request_timeout=30,
                _content_type="application/merge-patch+json",
            )  # fmt: skip
        except _ERRORS as exc:
            raise _translate(exc, f"patch deployment {name}") from exc

    def write_runtime_status(self, name: str, status: Mapping[str, Any]) -> None:
        """Replace this namespace's ServingRuntime's status subresource as a whole."""
        patch = [{"op": "add", "path": "/status", "value": dict(status)}]
        try:
            self._custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, self.namespace, "servingruntimes", name, patch,
                _content_type="application/json-patch+json", _request_timeout=30,
            )  # fmt: skip
        except _ERRORS as exc:
            raise _translate(exc, f"status of servingruntimes {name}") from exc

    def scale(self, name: str) -> tuple[int, int, str]:
        """(spec.replicas, status.replicas, resourceVersion) of the Deployment's scale."""
        try:
            scale = self._apps.read_namespaced_deployment_scale(
                name, self.namespace, _request_timeout=30
            )
        except _ERRORS as exc:
            raise _translate(exc, f"scale of deployment {name}") from exc
        spec_replicas = scale.spec.replicas if scale.spec is not None else 0
        status_replicas = scale.status.replicas if scale.status is not None else 0
        return int(spec_replicas or 0), int(status_replicas or 0), scale.metadata.resource_version

    def mark_for_removal(self, pod: str) -> bool:
        """Give a pod the lowest `controller.kubernetes.io/pod-deletion-cost`, so that the
        ReplicaSet removes it first on the next scale-down; False when it cannot (no such pod,
        or no right to patch pods): the ReplicaSet then picks one itself."""
        patch = {"metadata": {"annotations": {DELETION_COST: str(REMOVE_FIRST)}}}
        try:
            self._core.patch_namespaced_pod(pod, self.namespace, patch, _request_timeout=30)
        except _ERRORS as exc:
            log.info("pod %s: deletion cost not set (%s); the ReplicaSet chooses", pod, exc)
            return False
        return True

    def unmark(self, pod: str) -> None:
        """Withdraw `mark_for_removal` (the scale-down it was for was not written)."""
        patch = {"metadata": {"annotations": {DELETION_COST: None}}}
        try:
            self._core.patch_namespaced_pod(pod, self.namespace, patch, _request_timeout=30)
        except _ERRORS as exc:
            log.warning("pod %s: deletion cost not withdrawn (%s)", pod, exc)

    def set_scale(self, name: str, replicas: int, resource_version: str) -> None:
        """Write spec.replicas through the scale subresource, if the scale read is still
        current (Conflict otherwise)."""
        body = k8s.V1Scale(
            metadata=k8s.V1ObjectMeta(
                name=name, namespace=self.namespace, resource_version=resource_version
            ),
            spec=k8s.V1ScaleSpec(replicas=replicas),
        )
        try:
            self._apps.replace_namespaced_deployment_scale(
                name, self.namespace, body, _request_timeout=30
            )
        except _ERRORS as exc:
            raise _translate(exc, f"scale deployment {name}") from exc


class EventRecorder:
    """Kubernetes Events (core/v1) on the objects the controller looks after, as
    `kubectl describe` and `kubectl get events` show them.

        events = EventRecorder(api_client, "ml", instance="mesh-controller-0")
        events.record(predictor, "Warning", "FailedToLoad", "fraud-1a2b on pod-3: ...")

    An Event is a note, not state: one that cannot be written is logged and dropped, never a
    failed reconcile. The same reason and message on the same object within `dedupe` seconds
    raise the Event's count instead of adding one (as client-go's correlator does).
    """

    def __init__(
        self,
        api_client: k8s.ApiClient,
        namespace: str,
        component: str = "mesh-controller",
        instance: str = "",
        dedupe: float = 600.0,
    ) -> None:
        self._api: Any = k8s.CoreV1Api(api_client)
        self.namespace = namespace
        self.component = component
        self.instance = instance
        self._dedupe = dedupe
        self._recent: dict[tuple[str, str, str, str], tuple[str, int, float]] = {}

    def record(self, involved: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """One Event on `involved` (an object with apiVersion, kind and metadata)."""
        metadata = involved.get("metadata") or {}
        name = str(metadata.get("name", ""))
        kind = str(involved.get("kind", ""))
        key = (kind, name, reason, message)
        now = datetime.datetime.now(datetime.UTC)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        seen = self._recent.get(key)
        try:
            if seen is not None and time.monotonic() - seen[2] < self._dedupe:
                event_name, count, _ = seen
                patch = {"count": count + 1, "lastTimestamp": stamp}
                self._api.patch_namespaced_event(
                    event_name, self.namespace, patch, _request_timeout=10
                )
                self._recent[key] = (event_name, count + 1, time.monotonic())
                return
            event_name = f"{name}.{time.time_ns():x}"
            involved_object = {
                "apiVersion": involved.get("apiVersion", ""), "kind": kind, "name": name,
                "namespace": metadata.get("namespace", self.namespace),
            }  # fmt: skip
            if metadata.get("uid"):
                involved_object["uid"] = metadata["uid"]
            body = {
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": event_name, "namespace": self.namespace},
                "involvedObject": involved_object, "type": type_, "reason": reason,
                "message": message[:1024], "count": 1,
                "firstTimestamp": stamp, "lastTimestamp": stamp,
                "source": {"component": self.component},
                "reportingComponent": self.component, "reportingInstance": self.instance,
            }  # fmt: skip
            self._api.create_namespaced_event(self.namespace, body, _request_timeout=10)
            self._recent[key] = (event_name, 1, time.monotonic())
            if len(self._recent) > 4096:  # bounded: forget the oldest half
                for old in sorted(self._recent, key=lambda k: self._recent[k][2])[:2048]:
                    del self._recent[old]
        except _ERRORS as exc:
            log.info("event %s on %s %s not recorded: %s", reason, kind, name, exc)


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class LeaseLock:
    """Leader election on a coordination.k8s.io/v1 Lease, as client-go does it.

    A holder renews the Lease every `renew` seconds. Another candidate takes it over only when
    it has seen the Lease unchanged for `duration` seconds by its own clock, so clocks that
    disagree between nodes do not matter. Every write carries the resourceVersion read, so two
    candidates can never both win: one gets 409.
    """

    def __init__(
        self,
        api_client: k8s.ApiClient,
        namespace: str,
        name: str,
        identity: str,
        duration: float = 15.0,
    ) -> None:
        self._api: Any = k8s.CoordinationV1Api(api_client)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = duration
        self._observed: tuple[str, str] | None = None  # (holder, resourceVersion) last seen
        self._observed_at = 0.0

    def try_acquire_or_renew(self) -> bool:
        """One round: True if this candidate holds the Lease now."""
        now = datetime.datetime.now(datetime.UTC)
        try:
            lease = self._api.read_namespaced_lease(self.name, self.namespace, _request_timeout=10)
        except ApiException as exc:
            if exc.status != 404:
                raise _translate(exc, f"lease {self.name}") from exc
            return self._create(now)
        except _ERRORS as exc:
            raise _translate(exc, f"lease {self.name}") from exc
        spec = lease.spec or k8s.V1LeaseSpec()
        holder = spec.holder_identity or ""
        seen = (holder, lease.metadata.resource_version)
        if seen != self._observed:
            self._observed, self._observed_at = seen, time.monotonic()
        expired = time.monotonic() - self._observed_at > (spec.lease_duration_seconds or 0)
        if holder and holder != self.identity and not expired:
            return False
        if holder != self.identity:
            spec.acquire_time = now
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
            log.info("taking the lease %s over from %r", self.name, holder or "nobody")
        spec.holder_identity = self.identity
        spec.renew_time = now
        spec.lease_duration_seconds = int(self.duration)
        lease.spec = spec
        try:
            updated = self._api.replace_namespaced_lease(
                self.name, self.namespace, lease, _request_timeout=10
            )
        except _ERRORS as exc:
            error = _translate(exc, f"lease {self.name}")
            if isinstance(error, Conflict):
                return False  # someone else wrote it first
            raise error from exc
        self._observed = (self.identity, updated.metadata.resource_version)
        self._observed_at = time.monotonic()
        return True

    def _create(self, now: datetime.datetime) -> bool:
        body = k8s.V1Lease(
            metadata=k8s.V1ObjectMeta(name=self.name, namespace=self.namespace),
            spec=k8s.V1LeaseSpec(
                holder_identity=self.identity,
                lease_duration_seconds=int(self.duration),
                acquire_time=now,
                renew_time=now,
                lease_transitions=0,
            ),
        )
        try:
            self._api.create_namespaced_lease(self.namespace, body, _request_timeout=10)
        except _ERRORS as exc:
            error = _translate(exc, f"lease {self.name}")
            if isinstance(error, Conflict):
                return False
            raise error from exc
        return True

    def release(self) -> None:
        """Give the Lease up (on a clean stop), so another candidate need not wait it out."""
        try:
            lease = self._api.read_namespaced_lease(self.name, self.namespace, _request_timeout=5)
            if lease.spec is None or lease.spec.holder_identity != self.identity:
                return
            lease.spec.holder_identity = ""
            lease.spec.lease_duration_seconds = 1
            self._api.replace_namespaced_lease(self.name, self.namespace, lease, _request_timeout=5)
        except _ERRORS as exc:
            log.info("could not release the lease %s: %s", self.name, exc)
