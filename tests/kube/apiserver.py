"""A fake Kubernetes API server on loopback, good enough for the official ``kubernetes`` client.

No real kube-apiserver can run where the tests run, so this module serves the small part of the
Kubernetes API that the mesh controller uses, over real HTTP/1.1 (keep-alive, chunked watch
streams), with the real server's semantics where a controller would notice them:

- one global, monotonically increasing resourceVersion (an integer, a string on the wire), as
  etcd gives the real server; every write that changes something takes the next one;
- create (uid, creationTimestamp, generation, 409 AlreadyExists, 400/422 for a bad body, status
  dropped on create where the status subresource exists), get, list (label and
  ``metadata.name``/``metadata.namespace`` field selectors, simple ``limit``/``continue``);
- replace and patch with optimistic concurrency (409 Conflict on a stale resourceVersion; a custom
  resource refuses a replace without one, 422), the status subresource (writes to the object
  ignore status, writes to ``/status`` take only status), ``generation`` bumped when anything but
  metadata and status changes, and an update that changes nothing is not written (no new
  resourceVersion, no event), as the real server does;
- merge patch (RFC 7386) and JSON patch (RFC 6902: add, remove, replace, move, copy, test; a failed
  op answers 422); strategic merge patch answers 415 on a custom resource and is applied as a
  merge patch on a built-in one;
- graceful deletion with finalizers (deletionTimestamp set, generation bumped, MODIFIED; the
  object goes, with one DELETED event, when an update leaves it without finalizers; no new
  finalizers while it is being deleted), delete preconditions (uid, resourceVersion);
- watches (``watch=true`` or the old ``/watch/`` paths) from a resourceVersion, or from the current
  state with synthetic ADDED events when none (or "0") is given; ``timeoutSeconds``; BOOKMARK
  events with ``allowWatchBookmarks``; objects entering or leaving a label selector arrive as
  ADDED or DELETED; a bounded event history, and a watch from a resourceVersion older than what
  it keeps gets HTTP 200 then one ERROR event carrying a 410 Expired Status, then the end, exactly
  as the real server answers; a watcher that falls too far behind is ended;
- errors as Kubernetes ``Status`` objects with the real reasons and codes, so the client raises
  ``ApiException`` with ``.status`` set.

Test controls (all thread-safe): ``drop_watches()``, ``compact()``, ``fail_next()``,
``fired`` (the injected failures that were answered, in order) and ``unfired()`` (those still
waiting for a request), ``requests``, ``objects()``, ``get()``, ``create()``, ``replace()``, ``patch()``, ``delete()``,
``watch_count()``, ``wait_for_watches()``, ``send_bookmarks()``.

Left out: authentication and authorization (no TLS, any caller may do anything), admission
(mutating or validating webhooks), OpenAPI schema validation, defaulting and pruning of custom
resources, namespaces as objects (any namespace exists), server-side apply
(``application/apply-patch+yaml`` answers 415), ``dryRun`` (refused with 400), field selectors
other than ``metadata.name``/``metadata.namespace``, set-based label selectors (``in``, ``notin``;
refused with 400), list ``resourceVersion``/``resourceVersionMatch`` semantics (a list is always
the current state; ``continue`` pages read the current state, not a snapshot), deletecollection,
propagation policies and garbage collection (ownerReferences are stored, never acted on),
``managedFields``, ``sendInitialEvents``, protobuf and YAML encodings, discovery (only
``/version``, ``/healthz``, ``/readyz``), and the real server's default watch timeout (a watch
without ``timeoutSeconds`` lasts until it is dropped). Strategic merge on a built-in resource is a
plain merge patch (no list merge keys).

Failure modes: a request the fake does not understand answers 404, 405 or 415 with a Status, never
a hang; ``close()`` ends every watch stream and every keep-alive connection, so shutdown returns
promptly; writers never wait on watchers (each watch has its own queue).

The parts, one job each (this module is the facade: lifecycle and test controls):

- ``resources``: the served resources and the per-resource schema rules;
- ``errors``: ``KubeError`` and the ``Status`` bodies with the real reasons;
- ``patch``: merge patch and JSON patch, pure;
- ``selector``: label and field selectors;
- ``store``: the objects, the resourceVersion, the write semantics and the event history, no
  HTTP (every method under its lock);
- ``watch``: events and what one watcher sees of them;
- ``httpserver``: routing, bodies, chunked watch streams, connections.

Usage::

    with FakeKubeAPI() as api:
        crd = kubernetes.client.CustomObjectsApi(api.client())
        crd.create_namespaced_custom_object("serving.kserve.io", "v1alpha1", "default",
                                            "predictors", {...})
        api.patch("predictors", "default", "p1", {"spec": {"replicas": 2}})
        api.fail_next("PATCH", r"/status$", 409)
"""

from __future__ import annotations

import copy
import json
import re
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import kubernetes.client

from tests.kube.errors import KubeError
from tests.kube.httpserver import _Handler, _Server
from tests.kube.patch import json_patch, merge_patch
from tests.kube.resources import DEFAULT_RESOURCES, LEASES, PREDICTORS, Obj, Resource
from tests.kube.store import Store, sort_key
from tests.kube.watch import shutdown_socket


class ServedRequest(NamedTuple):
    method: str
    path: str  # without the query string
    content_type: str | None


class FiredFault(NamedTuple):
    """One injected failure answered instead of processing a request."""

    method: str
    path: str  # the request's path, without the query string
    code: int
    watch: bool


@dataclass
class _Injection:
    method: str
    path: re.Pattern[str]
    code: int
    remaining: int
    watch: bool | None
    message: str


class FakeKubeAPI:
    """An in-memory Kubernetes API server on 127.0.0.1; see the module docstring.

    ::

        with FakeKubeAPI() as api:
            leases = kubernetes.client.CoordinationV1Api(api.client())
            api.wait_for_watches(1)          # e.g. until the controller under test watches
            api.drop_watches()               # as if the API server restarted
    """

    def __init__(
        self,
        resources: Iterable[Resource] = DEFAULT_RESOURCES,
        *,
        port: int = 0,
        history_limit: int = 1000,
        bookmark_interval: float = 1.0,
        max_watch_backlog: int = 10_000,
    ) -> None:
        self.resources = tuple(resources)
        self.bookmark_interval = bookmark_interval
        self.store = Store(
            self.resources, history_limit=history_limit, max_watch_backlog=max_watch_backlog
        )
        self._port = port
        self._connections: set[socket.socket] = set()
        self._accepted = 0
        self._requests: list[ServedRequest] = []
        self._injections: list[_Injection] = []
        self._fired: list[FiredFault] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FakeKubeAPI:
        """Listen and serve in a background thread; returns once listening."""
        if self._server is not None:
            raise RuntimeError("FakeKubeAPI already started")
        self._server = _Server(("127.0.0.1", self._port), _Handler, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-kube-api-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """End every watch stream and connection and stop serving; safe to call twice."""
        with self.store.lock:
            if self.store.closed or self._server is None:
                self.store.closed = True
                return
            self.store.closed = True
            watches = list(self.store.watches)
        for w in watches:
            w.end(graceful=True)
        deadline = time.monotonic() + 1.0
        while self.watch_count() and time.monotonic() < deadline:
            time.sleep(0.01)
        self._server.shutdown()
        with self.store.lock:
            connections = list(self._connections)
            watches = list(self.store.watches)
        for w in watches:
            w.end(graceful=False)
        for conn in connections:
            shutdown_socket(conn)
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeKubeAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeKubeAPI not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def configuration(self) -> kubernetes.client.Configuration:
        """A client Configuration for this server: plain HTTP, no credentials."""
        config = kubernetes.client.Configuration()
        config.host = self.url
        return config

    def client(self) -> kubernetes.client.ApiClient:
        """A new ApiClient for this server; close it when done."""
        return kubernetes.client.ApiClient(configuration=self.configuration())

    # --- test controls -------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        with self.store.lock:
            return self.store.rv

    @property
    def requests(self) -> list[ServedRequest]:
        """A copy of every request received so far, injected failures included, in order."""
        with self.store.lock:
            return list(self._requests)

    @property
    def fired(self) -> list[FiredFault]:
        """Every injected failure answered so far, in order: a test that injects a fault checks
        here that it reached the server (a fault nobody hit proves nothing)."""
        with self.store.lock:
            return list(self._fired)

    def unfired(self) -> list[tuple[str, str, int, int]]:
        """(method, path regex, code, remaining) of each injection not yet used up."""
        with self.store.lock:
            return [(i.method, i.path.pattern, i.code, i.remaining) for i in self._injections]

    def reset_requests(self) -> None:
        with self.store.lock:
            self._requests.clear()

    def accepted_connections(self) -> int:
        """How many TCP connections the server has accepted (keep-alive reuses one)."""
        with self.store.lock:
            return self._accepted

    def watch_count(self) -> int:
        """Open watch streams: each is registered before any event is sent on it."""
        with self.store.lock:
            return len(self.store.watches)

    def wait_for_watches(self, count: int = 1, timeout: float = 5.0) -> None:
        """Wait until at least ``count`` watch streams are open; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while self.watch_count() < count:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.watch_count()} watches open, wanted {count}")
            time.sleep(0.005)

    def drop_watches(self, *, graceful: bool = False) -> int:
        """End every open watch stream; returns how many. Abrupt (the default) cuts the TCP
        connection mid-stream, as a network cut or a crashed server would: the client's read
        fails (urllib3 ProtocolError). ``graceful`` finishes each chunked response cleanly, as an
        API server shutting down does: the client's stream just ends."""
        with self.store.lock:
            watches = list(self.store.watches)
        for w in watches:
            w.end(graceful=graceful)
        return len(watches)

    def compact(self) -> int:
        """Forget the event history up to now, as etcd compaction does: a watch from an older
        resourceVersion then gets the 410 Expired ERROR event. Returns the compacted revision."""
        with self.store.lock:
            self.store.history.clear()
            self.store.compacted_rv = self.store.rv
            return self.store.rv

    def send_bookmarks(self) -> None:
        """Have every watch that allowed bookmarks send one now (once it has sent what it has)."""
        with self.store.lock:
            for w in self.store.watches:
                if w.bookmarks:
                    w.queue.put(("bookmark",))

    def fail_next(
        self,
        method: str,
        path_regex: str,
        code: int,
        times: int = 1,
        *,
        watch: bool | None = None,
        message: str = "injected failure",
    ) -> None:
        """Answer the next ``times`` requests whose method matches (``*`` for any) and whose path
        (no query) matches ``path_regex`` (``re.search``) with a Status of ``code`` instead of
        processing them. ``watch`` narrows the match to watch requests (True) or to the rest
        (False); a watch so failed gets a plain HTTP error, not a stream."""
        with self.store.lock:
            self._injections.append(
                _Injection(method.upper(), re.compile(path_regex), code, times, watch, message)
            )

    def objects(self, plural: str, namespace: str | None = None) -> list[Obj]:
        """Copies of the stored objects of one resource (all namespaces when None), by key."""
        res = self.store.resource(plural)
        with self.store.lock:
            found = [
                copy.deepcopy(obj)
                for (r, ns, _), obj in sorted(self.store.objects.items(), key=sort_key)
                if r == res and (namespace is None or ns == namespace)
            ]
        return found

    def get(self, plural: str, namespace: str | None, name: str) -> Obj | None:
        res = self.store.resource(plural)
        with self.store.lock:
            obj = self.store.objects.get((res, namespace if res.namespaced else None, name))
            return copy.deepcopy(obj) if obj is not None else None

    def create(self, plural: str, obj: Obj, namespace: str | None = None) -> Obj:
        """Create as ``kubectl create`` would (status is dropped where a subresource has it);
        the namespace defaults to the object's, then "default". Raises KubeError."""
        res = self.store.resource(plural)
        body = copy.deepcopy(obj)
        body.setdefault("apiVersion", res.api_version)
        body.setdefault("kind", res.kind)
        if res.namespaced:
            namespace = namespace or (body.get("metadata") or {}).get("namespace") or "default"
        else:
            namespace = None
        with self.store.lock:
            return copy.deepcopy(self.store.create(res, namespace, body))

    def replace(self, plural: str, obj: Obj, *, subresource: str | None = None) -> Obj:
        """Replace as ``kubectl replace`` would; the resourceVersion in ``obj``, if any, must be
        current. Raises KubeError."""
        res = self.store.resource(plural)
        body = copy.deepcopy(obj)
        body.setdefault("apiVersion", res.api_version)
        body.setdefault("kind", res.kind)
        meta = body.get("metadata") or {}
        namespace = (meta.get("namespace") or "default") if res.namespaced else None
        with self.store.lock:
            current = self.store.objects.get((res, namespace, meta.get("name", "")))
            if current is not None and not meta.get("resourceVersion"):
                meta["resourceVersion"] = current["metadata"]["resourceVersion"]
            _, out = self.store.replace(res, namespace, meta.get("name", ""), body, subresource)
            return copy.deepcopy(out)

    def patch(
        self,
        plural: str,
        namespace: str | None,
        name: str,
        patch: Obj | list[Obj],
        *,
        subresource: str | None = None,
        patch_type: str | None = None,
    ) -> Obj:
        """Patch as ``kubectl patch`` would: ``patch_type`` "merge" or "json" (default: json for
        a list, merge for a dict). Returns the stored object (or the deleted one when the patch
        removed the last finalizer of an object being deleted). Raises KubeError."""
        res = self.store.resource(plural)
        kind = patch_type or ("json" if isinstance(patch, list) else "merge")
        content_type = {
            "merge": "application/merge-patch+json",
            "json": "application/json-patch+json",
        }[kind]
        raw = json.dumps(patch).encode()
        namespace = (namespace or "default") if res.namespaced else None
        with self.store.lock:
            out = self.store.patch(res, namespace, name, content_type, raw, subresource)
            return copy.deepcopy(out)

    def delete(self, plural: str, namespace: str | None, name: str) -> Obj:
        """Delete as ``kubectl delete --wait=false`` would; returns the object as left (with a
        deletionTimestamp while finalizers remain) or as deleted. Raises KubeError."""
        res = self.store.resource(plural)
        with self.store.lock:
            _, obj = self.store.delete(res, namespace if res.namespaced else None, name, {})
            return copy.deepcopy(obj)

    # --- what the HTTP layer reports -----------------------------------------------------------

    def connection_opened(self, sock: socket.socket) -> None:
        with self.store.lock:
            self._connections.add(sock)
            self._accepted += 1

    def connection_closed(self, sock: socket.socket) -> None:
        with self.store.lock:
            self._connections.discard(sock)

    def record(self, method: str, path: str, content_type: str | None) -> None:
        with self.store.lock:
            self._requests.append(ServedRequest(method, path, content_type))

    def injected(self, method: str, path: str, is_watch: bool) -> KubeError | None:
        with self.store.lock:
            for inj in self._injections:
                if (
                    inj.method in ("*", method)
                    and inj.path.search(path)
                    and inj.watch in (None, is_watch)
                ):
                    inj.remaining -= 1
                    if inj.remaining <= 0:
                        self._injections.remove(inj)
                    self._fired.append(FiredFault(method, path, inj.code, is_watch))
                    return KubeError(inj.code, f"{inj.message} (fail_next)")
        return None


__all__ = [
    "DEFAULT_RESOURCES",
    "LEASES",
    "PREDICTORS",
    "FakeKubeAPI",
    "KubeError",
    "Resource",
    "ServedRequest",
    "json_patch",
    "merge_patch",
]
