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

Usage::

    with FakeKubeAPI() as api:
        crd = kubernetes.client.CustomObjectsApi(api.client())
        crd.create_namespaced_custom_object("serving.kserve.io", "v1alpha1", "default",
                                            "predictors", {...})
        api.patch("predictors", "default", "p1", {"spec": {"replicas": 2}})
        api.fail_next("PATCH", r"/status$", 409)
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import logging
import queue
import random
import re
import select
import socket
import socketserver
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

import kubernetes.client

_log = logging.getLogger(__name__)

Obj = dict[str, Any]


@dataclass(frozen=True)
class Resource:
    """One served resource. ``builtin`` marks a compiled-in type rather than a custom resource:
    kind/apiVersion may be left out of a body, strategic merge is accepted, a replace needs no
    resourceVersion, a replace of a missing object creates it, and no ``generation`` is kept."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    has_status: bool = False
    builtin: bool = False
    # Dotted paths of metav1.MicroTime fields, normalised to "2006-01-02T15:04:05.000000Z".
    micro_time_fields: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def group_resource(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def tracks_generation(self) -> bool:
        return not self.builtin


PREDICTORS = Resource("serving.kserve.io", "v1alpha1", "predictors", "Predictor", has_status=True)
LEASES = Resource(
    "coordination.k8s.io",
    "v1",
    "leases",
    "Lease",
    builtin=True,
    micro_time_fields=("spec.acquireTime", "spec.renewTime"),
)
# core/v1 Events, as a controller records them (kubectl describe shows them).
EVENTS = Resource("", "v1", "events", "Event", builtin=True)
DEFAULT_RESOURCES: tuple[Resource, ...] = (PREDICTORS, LEASES, EVENTS)


_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Gone",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class KubeError(Exception):
    """An error the fake answers as a Kubernetes Status; raised by the helper methods too."""

    def __init__(
        self,
        code: int,
        message: str,
        reason: str | None = None,
        details: Obj | None = None,
    ) -> None:
        super().__init__(f"{code} {reason or _REASONS.get(code, '')}: {message}")
        self.code = code
        self.message = message
        self.reason = reason or _REASONS.get(code, "")
        self.details = details

    def status(self) -> Obj:
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def _details(res: Resource, name: str, causes: list[Obj] | None = None) -> Obj:
    details: Obj = {"name": name, "kind": res.plural}
    if res.group:
        details["group"] = res.group
    if causes:
        details["causes"] = causes
    return details


def _not_found(res: Resource, name: str) -> KubeError:
    return KubeError(404, f'{res.group_resource} "{name}" not found', details=_details(res, name))


def _conflict(res: Resource, name: str) -> KubeError:
    return KubeError(
        409,
        f'Operation cannot be fulfilled on {res.group_resource} "{name}": the object has been '
        "modified; please apply your changes to the latest version and try again",
        details=_details(res, name),
    )


def _invalid(res: Resource, name: str, field_path: str, problem: str) -> KubeError:
    kind = f"{res.kind}.{res.group}" if res.group else res.kind
    return KubeError(
        422,
        f'{kind} "{name}" is invalid: {field_path}: {problem}',
        details={
            **_details(res, name, [{"message": problem, "field": field_path}]),
            "kind": res.kind,
        },
    )


def _now() -> datetime:
    return datetime.now(UTC)


def _rfc3339(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


_FRACTION = re.compile(r"(\.\d{1,6})\d*")


def _micro_time(value: Any, path: str) -> Any:
    if value is None:
        return None
    if not isinstance(value, str):
        raise KubeError(400, f"{path}: expected an RFC 3339 time string, got {value!r}")
    try:
        parsed = datetime.fromisoformat(_FRACTION.sub(r"\1", value, count=1))
    except ValueError as exc:
        raise KubeError(400, f"{path}: {value!r} is not an RFC 3339 time") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _normalise_times(res: Resource, obj: Obj) -> None:
    for dotted in res.micro_time_fields:
        *parents, leaf = dotted.split(".")
        node: Any = obj
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            node[leaf] = _micro_time(node[leaf], dotted)


def _parse_bool(value: str | None) -> bool:
    return value in ("1", "t", "T", "true", "TRUE", "True")


# --- patches ------------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch; returns a new document and leaves ``target`` alone."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class _PatchFailed(Exception):
    pass


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise _PatchFailed(f"invalid JSON pointer {path!r}")
    if path == "":
        return []
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _index(container: list[Any], token: str, *, for_add: bool) -> int:
    if token == "-" and for_add:
        return len(container)
    if not token.isdigit() or (token != "0" and token.startswith("0")):
        raise _PatchFailed(f"invalid array index {token!r}")
    index = int(token)
    if index > len(container) or (index == len(container) and not for_add):
        raise _PatchFailed(f"array index {index} out of bounds")
    return index


def _parent(doc: Any, tokens: list[str]) -> Any:
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, for_add=False)]
        else:
            raise _PatchFailed(f"path /{'/'.join(tokens)} does not exist")
    return node


def _get(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        return doc
    parent = _parent(doc, tokens)
    token = tokens[-1]
    if isinstance(parent, dict) and token in parent:
        return parent[token]
    if isinstance(parent, list):
        return parent[_index(parent, token, for_add=False)]
    raise _PatchFailed(f"path /{'/'.join(tokens)} does not exist")


def _add(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent = _parent(doc, tokens)
    if isinstance(parent, dict):
        parent[tokens[-1]] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, tokens[-1], for_add=True), value)
    else:
        raise _PatchFailed(f"cannot add at /{'/'.join(tokens)}")
    return doc


def _remove(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        raise _PatchFailed("cannot remove the whole document")
    parent = _parent(doc, tokens)
    if isinstance(parent, dict) and tokens[-1] in parent:
        del parent[tokens[-1]]
    elif isinstance(parent, list):
        del parent[_index(parent, tokens[-1], for_add=False)]
    else:
        raise _PatchFailed(f"path /{'/'.join(tokens)} does not exist")
    return doc


def _json_equal(a: Any, b: Any) -> bool:
    # Python's 1 == True; JSON's does not.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def json_patch(doc: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch; returns a new document. Raises KubeError 400 for a malformed patch
    and 422 for one that does not apply (a failed ``test``, a missing path), as the server."""
    if not isinstance(operations, list) or not all(isinstance(op, dict) for op in operations):
        raise KubeError(400, "a JSON patch must be a JSON array of operation objects")
    result = copy.deepcopy(doc)
    try:
        for op in operations:
            kind = op.get("op")
            tokens = _pointer(op.get("path"))
            if kind in ("add", "replace", "test") and "value" not in op:
                raise _PatchFailed(f"operation {kind} has no value")
            if kind == "add":
                result = _add(result, tokens, copy.deepcopy(op["value"]))
            elif kind == "remove":
                result = _remove(result, tokens)
            elif kind == "replace":
                _get(result, tokens)
                result = _add(_remove(result, tokens), tokens, copy.deepcopy(op["value"]))
            elif kind == "test":
                if not _json_equal(_get(result, tokens), op["value"]):
                    raise _PatchFailed(f"testing value {op.get('path')} failed: test failed")
            elif kind in ("move", "copy"):
                source = _pointer(op.get("from"))
                value = copy.deepcopy(_get(result, source))
                if kind == "move":
                    result = _remove(result, source)
                result = _add(result, tokens, value)
            else:
                raise _PatchFailed(f"unexpected operation {kind!r}")
    except _PatchFailed as exc:
        raise KubeError(422, str(exc)) from exc
    return result


# --- selectors ----------------------------------------------------------------------------------

_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?$")


@dataclass(frozen=True)
class _Selector:
    labels: tuple[
        tuple[str, str, str], ...
    ] = ()  # (key, op, value), op in "=", "!=", "exists", "!"
    fields: tuple[tuple[str, str, str], ...] = ()

    @classmethod
    def parse(cls, label_selector: str | None, field_selector: str | None) -> _Selector:
        labels: list[tuple[str, str, str]] = []
        for term in _terms(label_selector, "labelSelector"):
            if "!=" in term:
                key, value = term.split("!=", 1)
                labels.append((key.strip(), "!=", value.strip()))
            elif "=" in term:
                key, value = re.split(r"==?", term, maxsplit=1)
                labels.append((key.strip(), "=", value.strip()))
            elif term.startswith("!") and _LABEL_KEY.match(term[1:].strip()):
                labels.append((term[1:].strip(), "!", ""))
            elif _LABEL_KEY.match(term):
                labels.append((term, "exists", ""))
            else:
                raise KubeError(400, f"unable to parse requirement {term!r} (fake: equality only)")
        fields: list[tuple[str, str, str]] = []
        for term in _terms(field_selector, "fieldSelector"):
            op = "!=" if "!=" in term else "="
            key, value = re.split(r"!=|==?", term, maxsplit=1)
            key = key.strip()
            if key not in ("metadata.name", "metadata.namespace"):
                raise KubeError(400, f'field label not supported: "{key}"')
            fields.append((key, op, value.strip()))
        return cls(tuple(labels), tuple(fields))

    def matches(self, obj: Obj) -> bool:
        meta = obj.get("metadata") or {}
        have = meta.get("labels") or {}
        for key, op, value in self.labels:
            if (
                (op == "=" and have.get(key) != value)
                or (op == "!=" and have.get(key) == value)
                or (op == "exists" and key not in have)
                or (op == "!" and key in have)
            ):
                return False
        for key, op, value in self.fields:
            actual = meta.get(key.split(".", 1)[1], "")
            if (actual == value) != (op == "="):
                return False
        return True


def _terms(selector: str | None, what: str) -> list[str]:
    if not selector:
        return []
    if "(" in selector or " in " in selector or " notin " in selector:
        raise KubeError(400, f"{what}: set-based requirements are not supported by the fake")
    return [t.strip() for t in selector.split(",") if t.strip()]


# --- events and watches -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Event:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    resource: Resource
    namespace: str | None
    obj: Obj  # never mutated once stored
    old: Obj | None  # the state before, for MODIFIED; selectors need it


@dataclass(eq=False)
class _Watch:
    resource: Resource
    namespace: str | None
    selector: _Selector
    sock: socket.socket
    bookmarks: bool
    queue: queue.SimpleQueue[tuple[Any, ...]] = field(default_factory=queue.SimpleQueue)
    ended: bool = False

    def translate(self, ev: _Event) -> tuple[str, Obj] | None:
        if ev.resource != self.resource:
            return None
        if self.namespace is not None and ev.namespace != self.namespace:
            return None
        now = self.selector.matches(ev.obj)
        if ev.type == "MODIFIED" and ev.old is not None:
            before = self.selector.matches(ev.old)
            if before and now:
                return ("MODIFIED", ev.obj)
            if now:
                return ("ADDED", ev.obj)
            if before:
                return ("DELETED", ev.obj)
            return None
        return (ev.type, ev.obj) if now else None

    def end(self, *, graceful: bool) -> None:
        """Ask the serving thread to end the stream; an abrupt end also cuts the socket now."""
        if self.ended:
            return
        self.ended = True
        self.queue.put(("stop", graceful))
        if not graceful:
            _shutdown(self.sock)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


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


_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"
_CONTINUE = "continue"


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
        self.history_limit = history_limit
        self.bookmark_interval = bookmark_interval
        self.max_watch_backlog = max_watch_backlog
        self._port = port
        self._lock = threading.Lock()
        self._rv = 1
        self._compacted_rv = 0  # a watch must start at or after this resourceVersion
        self._objects: dict[tuple[Resource, str | None, str], Obj] = {}
        self._history: deque[_Event] = deque()
        self._watches: set[_Watch] = set()
        self._connections: set[socket.socket] = set()
        self._accepted = 0
        self._requests: list[ServedRequest] = []
        self._injections: list[_Injection] = []
        self._fired: list[FiredFault] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

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
        with self._lock:
            if self._closed or self._server is None:
                self._closed = True
                return
            self._closed = True
            watches = list(self._watches)
        for w in watches:
            w.end(graceful=True)
        deadline = time.monotonic() + 1.0
        while self.watch_count() and time.monotonic() < deadline:
            time.sleep(0.01)
        self._server.shutdown()
        with self._lock:
            connections = list(self._connections)
            watches = list(self._watches)
        for w in watches:
            w.end(graceful=False)
        for conn in connections:
            _shutdown(conn)
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
        with self._lock:
            return self._rv

    @property
    def requests(self) -> list[ServedRequest]:
        """A copy of every request received so far, injected failures included, in order."""
        with self._lock:
            return list(self._requests)

    @property
    def fired(self) -> list[FiredFault]:
        """Every injected failure answered so far, in order: a test that injects a fault checks
        here that it reached the server (a fault nobody hit proves nothing)."""
        with self._lock:
            return list(self._fired)

    def unfired(self) -> list[tuple[str, str, int, int]]:
        """(method, path regex, code, remaining) of each injection not yet used up."""
        with self._lock:
            return [(i.method, i.path.pattern, i.code, i.remaining) for i in self._injections]

    def reset_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def accepted_connections(self) -> int:
        """How many TCP connections the server has accepted (keep-alive reuses one)."""
        with self._lock:
            return self._accepted

    def watch_count(self) -> int:
        """Open watch streams: each is registered before any event is sent on it."""
        with self._lock:
            return len(self._watches)

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
        with self._lock:
            watches = list(self._watches)
        for w in watches:
            w.end(graceful=graceful)
        return len(watches)

    def compact(self) -> int:
        """Forget the event history up to now, as etcd compaction does: a watch from an older
        resourceVersion then gets the 410 Expired ERROR event. Returns the compacted revision."""
        with self._lock:
            self._history.clear()
            self._compacted_rv = self._rv
            return self._rv

    def send_bookmarks(self) -> None:
        """Have every watch that allowed bookmarks send one now (once it has sent what it has)."""
        with self._lock:
            for w in self._watches:
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
        with self._lock:
            self._injections.append(
                _Injection(method.upper(), re.compile(path_regex), code, times, watch, message)
            )

    def objects(self, plural: str, namespace: str | None = None) -> list[Obj]:
        """Copies of the stored objects of one resource (all namespaces when None), by key."""
        res = self._resource(plural)
        with self._lock:
            found = [
                copy.deepcopy(obj)
                for (r, ns, _), obj in sorted(self._objects.items(), key=_sort_key)
                if r == res and (namespace is None or ns == namespace)
            ]
        return found

    def get(self, plural: str, namespace: str | None, name: str) -> Obj | None:
        res = self._resource(plural)
        with self._lock:
            obj = self._objects.get((res, namespace if res.namespaced else None, name))
            return copy.deepcopy(obj) if obj is not None else None

    def create(self, plural: str, obj: Obj, namespace: str | None = None) -> Obj:
        """Create as ``kubectl create`` would (status is dropped where a subresource has it);
        the namespace defaults to the object's, then "default". Raises KubeError."""
        res = self._resource(plural)
        body = copy.deepcopy(obj)
        body.setdefault("apiVersion", res.api_version)
        body.setdefault("kind", res.kind)
        if res.namespaced:
            namespace = namespace or (body.get("metadata") or {}).get("namespace") or "default"
        else:
            namespace = None
        with self._lock:
            return copy.deepcopy(self._create(res, namespace, body))

    def replace(self, plural: str, obj: Obj, *, subresource: str | None = None) -> Obj:
        """Replace as ``kubectl replace`` would; the resourceVersion in ``obj``, if any, must be
        current. Raises KubeError."""
        res = self._resource(plural)
        body = copy.deepcopy(obj)
        body.setdefault("apiVersion", res.api_version)
        body.setdefault("kind", res.kind)
        meta = body.get("metadata") or {}
        namespace = (meta.get("namespace") or "default") if res.namespaced else None
        with self._lock:
            current = self._objects.get((res, namespace, meta.get("name", "")))
            if current is not None and not meta.get("resourceVersion"):
                meta["resourceVersion"] = current["metadata"]["resourceVersion"]
            _, out = self._replace(res, namespace, meta.get("name", ""), body, subresource)
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
        res = self._resource(plural)
        kind = patch_type or ("json" if isinstance(patch, list) else "merge")
        content_type = {
            "merge": "application/merge-patch+json",
            "json": "application/json-patch+json",
        }[kind]
        raw = json.dumps(patch).encode()
        namespace = (namespace or "default") if res.namespaced else None
        with self._lock:
            out = self._patch(res, namespace, name, content_type, raw, subresource)
            return copy.deepcopy(out)

    def delete(self, plural: str, namespace: str | None, name: str) -> Obj:
        """Delete as ``kubectl delete --wait=false`` would; returns the object as left (with a
        deletionTimestamp while finalizers remain) or as deleted. Raises KubeError."""
        res = self._resource(plural)
        with self._lock:
            _, obj = self._delete(res, namespace if res.namespaced else None, name, {})
            return copy.deepcopy(obj)

    # --- store (all under self._lock) ----------------------------------------------------------

    def _resource(self, plural: str) -> Resource:
        matches = [r for r in self.resources if r.plural == plural]
        if len(matches) != 1:
            raise KeyError(f"{len(matches)} served resources named {plural!r}")
        return matches[0]

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _emit(self, ev: _Event) -> None:
        self._history.append(ev)
        while len(self._history) > self.history_limit:
            self._compacted_rv = self._history.popleft().rv
        for w in self._watches:
            if w.ended:
                continue
            translated = w.translate(ev)
            if translated is None:
                continue
            if w.queue.qsize() >= self.max_watch_backlog:
                _log.warning("fake kube-apiserver: ending a watch that fell behind")
                w.end(graceful=True)
            else:
                w.queue.put(("event", *translated))

    def _check_body(self, res: Resource, namespace: str | None, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise KubeError(400, "the request body must be a JSON object")
        api_version, kind = body.get("apiVersion"), body.get("kind")
        if res.builtin:
            api_version = api_version or res.api_version
            kind = kind or res.kind
        if not kind:
            raise KubeError(400, "Object 'Kind' is missing in the request body")
        if api_version != res.api_version:
            raise KubeError(
                400,
                f"the API version in the data ({api_version}) does not match the expected API "
                f"version ({res.api_version})",
            )
        if kind != res.kind:
            raise KubeError(
                400,
                f'{kind} in version "{res.version}" cannot be handled as a {res.kind}: '
                "the kind in the body does not match the URL",
            )
        body["apiVersion"], body["kind"] = api_version, kind
        meta = body.get("metadata")
        if meta is None:
            meta = body["metadata"] = {}
        if not isinstance(meta, dict):
            raise KubeError(400, "metadata must be a JSON object")
        if res.namespaced:
            if meta.get("namespace") not in (None, "", namespace):
                raise KubeError(
                    400,
                    "the namespace of the provided object does not match the namespace sent on "
                    "the request",
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        finalizers = meta.get("finalizers")
        if finalizers is not None and (
            not isinstance(finalizers, list) or not all(isinstance(f, str) for f in finalizers)
        ):
            raise _invalid(res, meta.get("name", ""), "metadata.finalizers", "must be strings")
        _normalise_times(res, body)
        return meta

    def _create(self, res: Resource, namespace: str | None, body: Any) -> Obj:
        meta = self._check_body(res, namespace, body)
        name = meta.get("name")
        if not name:
            prefix = meta.get("generateName")
            if not prefix:
                raise _invalid(
                    res, "", "metadata.name", "Required value: name or generateName is required"
                )
            while True:
                name = prefix + "".join(random.choice(_NAME_CHARS) for _ in range(5))
                if (res, namespace, name) not in self._objects:
                    break
            meta["name"] = name
        if not isinstance(name, str):
            raise _invalid(res, str(name), "metadata.name", "must be a string")
        if meta.get("resourceVersion"):
            raise KubeError(500, "resourceVersion should not be set on objects to be created")
        key = (res, namespace, name)
        if key in self._objects:
            raise KubeError(
                409,
                f'{res.group_resource} "{name}" already exists',
                reason="AlreadyExists",
                details=_details(res, name),
            )
        if res.has_status:
            body.pop("status", None)
        for system in ("deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
            meta.pop(system, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _rfc3339(_now())
        if res.tracks_generation:
            meta["generation"] = 1
        rv = self._next_rv()
        meta["resourceVersion"] = str(rv)
        obj: Obj = body
        self._objects[key] = obj
        self._emit(_Event(rv, "ADDED", res, namespace, obj, None))
        return obj

    def _replace(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        body: Any,
        subresource: str | None,
        *,
        from_patch: bool = False,
    ) -> tuple[int, Obj]:
        """Returns (HTTP code, object)."""
        current = self._objects.get((res, namespace, name))
        if current is None:
            if res.builtin and subresource is None and not from_patch:
                meta = self._check_body(res, namespace, body)
                meta.pop("resourceVersion", None)
                meta.setdefault("name", name)
                return 201, self._create(res, namespace, body)
            raise _not_found(res, name)
        meta = self._check_body(res, namespace, body)
        if meta.get("name", name) != name:
            raise KubeError(
                400,
                f"the name of the object ({meta.get('name')}) does not match the name on the URL "
                f"({name})",
            )
        old_meta = current["metadata"]
        rv = meta.get("resourceVersion")
        if rv in (None, ""):
            if not (res.builtin or from_patch):
                raise _invalid(
                    res,
                    name,
                    "metadata.resourceVersion",
                    "Invalid value: 0x0: must be specified for an update",
                )
        elif rv != old_meta["resourceVersion"]:
            raise _conflict(res, name)
        if meta.get("uid") not in (None, "", old_meta["uid"]):
            raise KubeError(
                409,
                f"Precondition failed: UID in precondition: {meta['uid']}, UID in object meta: "
                f"{old_meta['uid']}",
                reason="Conflict",
            )

        if subresource == "status":
            new = copy.deepcopy(current)
            if "status" in body:
                new["status"] = body["status"]
            else:
                new.pop("status", None)
        else:
            new = body
            if res.has_status:
                if "status" in current:
                    new["status"] = copy.deepcopy(current["status"])
                else:
                    new.pop("status", None)
            new_meta = new["metadata"]
            for system in (
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ):
                if system in old_meta:
                    new_meta[system] = old_meta[system]
                else:
                    new_meta.pop(system, None)
            new_meta["name"] = name
            if res.tracks_generation and _spec_of(new, res) != _spec_of(current, res):
                new_meta["generation"] = old_meta.get("generation", 0) + 1
            if "deletionTimestamp" in old_meta:
                before = old_meta.get("finalizers") or []
                added = [f for f in new_meta.get("finalizers") or [] if f not in before]
                if added:
                    raise _invalid(
                        res,
                        name,
                        "metadata.finalizers",
                        "Forbidden: no new finalizers can be added if the object is being "
                        f"deleted, found new finalizers {added}",
                    )
        new["metadata"]["resourceVersion"] = old_meta["resourceVersion"]
        if _json_equal(new, current):
            return 200, current  # nothing changed: the real server writes nothing either

        if "deletionTimestamp" in new["metadata"] and not new["metadata"].get("finalizers"):
            return 200, self._remove(res, namespace, name, current)
        rv_new = self._next_rv()
        new["metadata"]["resourceVersion"] = str(rv_new)
        self._objects[(res, namespace, name)] = new
        self._emit(_Event(rv_new, "MODIFIED", res, namespace, new, current))
        return 200, new

    def _patch(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        content_type: str | None,
        raw: bytes,
        subresource: str | None,
    ) -> Obj:
        media = (content_type or "").split(";", 1)[0].strip().lower()
        kinds = {"application/json-patch+json": "json", "application/merge-patch+json": "merge"}
        if res.builtin:
            kinds["application/strategic-merge-patch+json"] = "merge"
        kind = kinds.get(media)
        if kind is None:
            accepted = ", ".join(kinds)
            raise KubeError(
                415,
                f"the body of the request was in an unknown format - accepted media types "
                f"include: {accepted} (the fake has no server-side apply)",
            )
        try:
            patch = json.loads(raw or b"null")
        except ValueError as exc:
            raise KubeError(400, f"the patch is not valid JSON: {exc}") from exc
        current = self._objects.get((res, namespace, name))
        if current is None:
            raise _not_found(res, name)
        if kind == "merge":
            if not isinstance(patch, dict):
                raise KubeError(
                    400,
                    "a merge patch must be a JSON object (a JSON patch list needs the content "
                    "type application/json-patch+json)",
                )
            patched = merge_patch(copy.deepcopy(current), patch)
        else:
            patched = json_patch(current, patch)
        _, out = self._replace(res, namespace, name, patched, subresource, from_patch=True)
        return out

    def _delete(
        self, res: Resource, namespace: str | None, name: str, options: Obj
    ) -> tuple[int, Obj]:
        current = self._objects.get((res, namespace, name))
        if current is None:
            raise _not_found(res, name)
        meta = current["metadata"]
        pre = options.get("preconditions") or {}
        if pre.get("uid") not in (None, meta["uid"]):
            raise KubeError(
                409,
                f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: "
                f"{meta['uid']}",
            )
        if pre.get("resourceVersion") not in (None, meta["resourceVersion"]):
            raise KubeError(
                409,
                f"Precondition failed: ResourceVersion in precondition: {pre['resourceVersion']}, "
                f"ResourceVersion in object meta: {meta['resourceVersion']}",
            )
        if meta.get("finalizers"):
            if "deletionTimestamp" in meta:
                return 200, current  # already being deleted: nothing to write
            new = copy.deepcopy(current)
            new_meta = new["metadata"]
            new_meta["deletionTimestamp"] = _rfc3339(_now())
            new_meta["deletionGracePeriodSeconds"] = 0
            if new_meta.get("generation", 0) > 0:
                new_meta["generation"] += 1
            rv = self._next_rv()
            new_meta["resourceVersion"] = str(rv)
            self._objects[(res, namespace, name)] = new
            self._emit(_Event(rv, "MODIFIED", res, namespace, new, current))
            return 200, new
        gone = self._remove(res, namespace, name, current)
        if res.builtin:
            details = {"name": name, "group": res.group, "kind": res.plural, "uid": meta["uid"]}
            return 200, {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": details,
            }
        return 200, gone

    def _remove(self, res: Resource, namespace: str | None, name: str, last: Obj) -> Obj:
        """Delete for good: the DELETED event carries the last stored state at a new revision."""
        del self._objects[(res, namespace, name)]
        rv = self._next_rv()
        gone = copy.deepcopy(last)
        gone["metadata"]["resourceVersion"] = str(rv)
        self._emit(_Event(rv, "DELETED", res, namespace, gone, None))
        return gone

    def _list(
        self, res: Resource, namespace: str | None, selector: _Selector, query: dict[str, str]
    ) -> Obj:
        list_rv = self._rv
        start = ""
        token = query.get(_CONTINUE)
        if token:
            try:
                decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
                list_rv, start = int(decoded["rv"]), str(decoded["start"])
            except (ValueError, KeyError, TypeError) as exc:
                raise KubeError(400, "invalid continue token") from exc
        items = [
            obj
            for (r, ns, name), obj in sorted(self._objects.items(), key=_sort_key)
            if r == res
            and (namespace is None or ns == namespace)
            and f"{ns or ''}/{name}" > start
            and selector.matches(obj)
        ]
        meta: Obj = {"resourceVersion": str(list_rv)}
        limit = int(query.get("limit") or 0)
        if limit > 0 and len(items) > limit:
            last = items[limit - 1]["metadata"]
            key = f"{last.get('namespace') or ''}/{last['name']}"
            meta[_CONTINUE] = base64.urlsafe_b64encode(
                json.dumps({"rv": list_rv, "start": key}).encode()
            ).decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        return {
            "apiVersion": res.api_version,
            "kind": res.list_kind,
            "metadata": meta,
            "items": copy.deepcopy(items),
        }

    # --- HTTP ----------------------------------------------------------------------------------

    def _record(self, method: str, path: str, content_type: str | None) -> None:
        with self._lock:
            self._requests.append(ServedRequest(method, path, content_type))

    def _injected(self, method: str, path: str, is_watch: bool) -> KubeError | None:
        with self._lock:
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

    def _route(self, path: str) -> tuple[Resource, str | None, str | None, str | None, bool]:
        """(resource, namespace, name, subresource, watch-path) for a resource path."""
        segments = [s for s in path.split("/") if s]
        if len(segments) >= 2 and segments[0] == "api":
            group, version, rest = "", segments[1], segments[2:]
        elif len(segments) >= 3 and segments[0] == "apis":
            group, version, rest = segments[1], segments[2], segments[3:]
        else:
            raise KubeError(404, "the server could not find the requested resource")
        watch_path = bool(rest) and rest[0] == "watch"
        if watch_path:
            rest = rest[1:]
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise KubeError(404, "the server could not find the requested resource")
        plural = rest[0]
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        res = next(
            (
                r
                for r in self.resources
                if (r.group, r.version, r.plural) == (group, version, plural)
            ),
            None,
        )
        if (
            res is None
            or (namespace is not None and not res.namespaced)
            or (res.namespaced and namespace is None and name is not None)
            or (sub is not None and (sub != "status" or not res.has_status))
        ):
            raise KubeError(404, "the server could not find the requested resource")
        return res, namespace, name, sub, watch_path

    def _handle(
        self, handler: _Handler, method: str, path: str, query: dict[str, str], body: bytes
    ) -> tuple[int, Obj] | None:
        """Serve one request; returns (code, body) or None when a watch stream was served."""
        if path in ("/healthz", "/readyz", "/livez"):
            raise _Text(b"ok")
        if path == "/version":
            return 200, {"major": "1", "minor": "34", "gitVersion": "v1.34.0-fake"}
        res, namespace, name, sub, watch_path = self._route(path)
        if query.get("dryRun"):
            raise KubeError(400, "dryRun is not supported by the fake API server")
        content_type = handler.headers.get("Content-Type")
        if method == "GET":
            selector = _Selector.parse(query.get("labelSelector"), query.get("fieldSelector"))
            if watch_path or _parse_bool(query.get("watch")):
                if name is not None:
                    selector = _Selector(
                        selector.labels, (*selector.fields, ("metadata.name", "=", name))
                    )
                self._serve_watch(handler, res, namespace, selector, query)
                return None
            with self._lock:
                if name is None:
                    return 200, self._list(res, namespace, selector, query)
                obj = self._objects.get((res, namespace, name))
                if obj is None:
                    raise _not_found(res, name)
                return 200, copy.deepcopy(obj)
        if watch_path:
            raise KubeError(405, f"{method} is not allowed on a watch")
        if method == "POST":
            if name is not None or (res.namespaced and namespace is None):
                raise KubeError(405, f"the server does not allow POST on {path}")
            doc = _json_body(body, content_type)
            with self._lock:
                return 201, copy.deepcopy(self._create(res, namespace, doc))
        if name is None:
            raise KubeError(405, f"the server does not allow {method} on a collection here")
        if method == "PUT":
            doc = _json_body(body, content_type)
            with self._lock:
                code, obj = self._replace(res, namespace, name, doc, sub)
                return code, copy.deepcopy(obj)
        if method == "PATCH":
            with self._lock:
                return 200, copy.deepcopy(
                    self._patch(res, namespace, name, content_type, body, sub)
                )
        if method == "DELETE":
            if sub is not None:
                raise KubeError(405, "the server does not allow DELETE on a subresource")
            options = _json_body(body, content_type) if body.strip() else {}
            with self._lock:
                code, obj = self._delete(res, namespace, name, options)
                return code, copy.deepcopy(obj)
        raise KubeError(405, f"the server does not allow {method}")

    def _serve_watch(
        self,
        handler: _Handler,
        res: Resource,
        namespace: str | None,
        selector: _Selector,
        query: dict[str, str],
    ) -> None:
        rv_param = query.get("resourceVersion") or "0"
        try:
            timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
            from_rv = int(rv_param)
        except ValueError as exc:
            raise KubeError(400, f"invalid watch parameter: {exc}") from exc
        bookmarks = _parse_bool(query.get("allowWatchBookmarks"))
        w = _Watch(res, namespace, selector, handler.connection, bookmarks)
        initial: list[tuple[str, Obj]] = []
        expired: Obj | None = None
        with self._lock:
            if self._closed:
                raise KubeError(503, "the fake API server is shutting down")
            if from_rv == 0:
                initial = [
                    ("ADDED", obj)
                    for (r, ns, _), obj in sorted(self._objects.items(), key=_sort_key)
                    if r == res and (namespace is None or ns == namespace) and selector.matches(obj)
                ]
            elif from_rv < self._compacted_rv:
                expired = KubeError(
                    410,
                    f"too old resource version: {from_rv} ({self._compacted_rv})",
                    reason="Expired",
                ).status()
            else:
                for ev in self._history:
                    if ev.rv > from_rv and (t := w.translate(ev)) is not None:
                        initial.append(t)
            if expired is None:
                self._watches.add(w)
        try:
            handler.begin_stream()
            if expired is not None:
                handler.write_line({"type": "ERROR", "object": expired})
                handler.end_stream()
                return
            for kind, obj in initial:
                handler.write_line({"type": kind, "object": obj})
            self._stream(handler, w, timeout)
        except OSError:
            handler.close_connection = True
        finally:
            with self._lock:
                self._watches.discard(w)
                w.ended = True

    def _stream(self, handler: _Handler, w: _Watch, timeout: float | None) -> None:
        now = time.monotonic()
        deadline = now + timeout if timeout else None
        next_bookmark = now + self.bookmark_interval if w.bookmarks else None
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                handler.end_stream()
                return
            wait = 0.2
            for t in (deadline, next_bookmark):
                if t is not None:
                    wait = min(wait, max(t - now, 0.0))
            try:
                item = w.queue.get(timeout=wait)
            except queue.Empty:
                if _peer_closed(w.sock):
                    handler.close_connection = True
                    return
                if next_bookmark is not None and time.monotonic() >= next_bookmark:
                    item = ("bookmark",)
                else:
                    continue
            if item[0] == "stop":
                handler.close_connection = True
                if item[1]:
                    handler.end_stream()
                return
            if item[0] == "bookmark":
                with self._lock:
                    # Only once everything queued before is sent: the bookmark's promise.
                    rv = self._rv if w.queue.empty() else None
                if rv is None:
                    w.queue.put(item)
                    continue
                handler.write_line(
                    {
                        "type": "BOOKMARK",
                        "object": {
                            "kind": w.resource.kind,
                            "apiVersion": w.resource.api_version,
                            "metadata": {"resourceVersion": str(rv)},
                        },
                    }
                )
                if next_bookmark is not None:
                    next_bookmark = time.monotonic() + self.bookmark_interval
                continue
            _, kind, obj = item
            handler.write_line({"type": kind, "object": obj})


def _sort_key(item: tuple[tuple[Resource, str | None, str], Obj]) -> tuple[str, str]:
    (_, ns, name), _ = item
    return (ns or "", name)


def _spec_of(obj: Obj, res: Resource) -> Obj:
    skip = {"metadata", "status"} if res.has_status else {"metadata"}
    return {k: v for k, v in obj.items() if k not in skip}


def _json_body(body: bytes, content_type: str | None) -> Any:
    media = (content_type or "application/json").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise KubeError(
            415,
            f"the body of the request was in an unknown format ({media}) - accepted media types "
            "include: application/json",
        )
    try:
        return json.loads(body or b"null")
    except ValueError as exc:
        raise KubeError(400, f"the request body is not valid JSON: {exc}") from exc


def _peer_closed(sock: socket.socket) -> bool:
    """True when the client has closed or reset a connection it should not be writing to."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


class _Text(Exception):
    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[_Handler], api: FakeKubeAPI):
        self.api = api
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall on a machine without
        # DNS; loopback needs none of it.
        socketserver.TCPServer.server_bind(self)
        self.server_name = "127.0.0.1"
        self.server_port = int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle's algorithm the body waits for the
    # client's delayed ACK, 40 ms per request on keep-alive connections. Go's server (the real
    # one) sets TCP_NODELAY too.
    disable_nagle_algorithm = True
    server: _Server
    _streaming = False

    def setup(self) -> None:
        super().setup()
        api = self.server.api
        with api._lock:
            api._connections.add(self.connection)
            api._accepted += 1

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            api = self.server.api
            with api._lock:
                api._connections.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("fake kube-apiserver: " + format, *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self, method: str) -> None:
        api = self.server.api
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        body = self._read_body()
        api._record(method, url.path, self.headers.get("Content-Type"))
        is_watch = _parse_bool(query.get("watch")) or "/watch/" in url.path
        try:
            injected = api._injected(method, url.path, is_watch)
            if injected is not None:
                raise injected
            result = api._handle(self, method, url.path, query, body)
        except _Text as text:
            self._send(200, text.body, "text/plain; charset=utf-8")
            return
        except KubeError as err:
            result = (err.code, err.status())
        except Exception:
            _log.exception("fake kube-apiserver: %s %s failed", method, self.path)
            result = (500, KubeError(500, "internal error in the fake API server").status())
        if result is None:
            return
        if self._streaming:  # an error after a stream began cannot become a response
            self.close_connection = True
            return
        code, doc = result
        self._send(code, json.dumps(doc, separators=(",", ":")).encode(), "application/json")

    def _send(self, code: int, payload: bytes, content_type: str) -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            self.close_connection = True

    def begin_stream(self) -> None:
        self._streaming = True
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def write_line(self, doc: Obj) -> None:
        data = json.dumps(doc, separators=(",", ":")).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self._streaming = False


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
