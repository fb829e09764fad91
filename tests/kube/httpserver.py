"""The HTTP face of the fake API server: paths to resources (``/api``, ``/apis``, the old
``/watch/`` paths, subresources), request bodies and content types, chunked watch streams with
bookmarks, keep-alive connections with TCP_NODELAY, and errors as ``Status`` bodies.

A request the fake does not understand answers 404, 405 or 415 with a Status, never a hang.
"""

from __future__ import annotations

import copy
import json
import logging
import queue
import select
import socket
import socketserver
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from tests.kube.errors import KubeError, not_found
from tests.kube.resources import Obj, Resource
from tests.kube.selector import Selector
from tests.kube.store import Store, scale_of, sort_key
from tests.kube.watch import Watch

if TYPE_CHECKING:
    from tests.kube.apiserver import FakeKubeAPI

_log = logging.getLogger(__name__)


def parse_bool(value: str | None) -> bool:
    return value in ("1", "t", "T", "true", "TRUE", "True")


def _route(
    resources: tuple[Resource, ...], path: str
) -> tuple[Resource, str | None, str | None, str | None, bool]:
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
        (r for r in resources if (r.group, r.version, r.plural) == (group, version, plural)),
        None,
    )
    if (
        res is None
        or (namespace is not None and not res.namespaced)
        or (res.namespaced and namespace is None and name is not None)
        or (sub is not None and not res.serves(sub))
    ):
        raise KubeError(404, "the server could not find the requested resource")
    return res, namespace, name, sub, watch_path


def handle(
    api: FakeKubeAPI, handler: _Handler, method: str, path: str, query: dict[str, str], body: bytes
) -> tuple[int, Obj] | None:
    """Serve one request; returns (code, body) or None when a watch stream was served."""
    if path in ("/healthz", "/readyz", "/livez"):
        raise _Text(b"ok")
    if path == "/version":
        return 200, {"major": "1", "minor": "34", "gitVersion": "v1.34.0-fake"}
    res, namespace, name, sub, watch_path = _route(api.resources, path)
    if query.get("dryRun"):
        raise KubeError(400, "dryRun is not supported by the fake API server")
    content_type = handler.headers.get("Content-Type")
    if method == "GET":
        selector = Selector.parse(query.get("labelSelector"), query.get("fieldSelector"))
        if watch_path or parse_bool(query.get("watch")):
            if name is not None:
                selector = Selector(
                    selector.labels, (*selector.fields, ("metadata.name", "=", name))
                )
            _serve_watch(api, handler, res, namespace, selector, query)
            return None
        with api.store.lock:
            if name is None:
                return 200, api.store.list(res, namespace, selector, query)
            obj = api.store.objects.get((res, namespace, name))
            if obj is None:
                raise not_found(res, name)
            if sub == "scale":
                return 200, scale_of(res, obj)
            return 200, copy.deepcopy(obj)
    if watch_path:
        raise KubeError(405, f"{method} is not allowed on a watch")
    if method == "POST":
        if name is not None or (res.namespaced and namespace is None):
            raise KubeError(405, f"the server does not allow POST on {path}")
        doc = _json_body(body, content_type)
        with api.store.lock:
            return 201, copy.deepcopy(api.store.create(res, namespace, doc))
    if name is None:
        raise KubeError(405, f"the server does not allow {method} on a collection here")
    if method == "PUT":
        doc = _json_body(body, content_type)
        with api.store.lock:
            code, obj = api.store.replace(res, namespace, name, doc, sub)
            return code, copy.deepcopy(obj)
    if method == "PATCH":
        with api.store.lock:
            return 200, copy.deepcopy(
                api.store.patch(res, namespace, name, content_type, body, sub)
            )
    if method == "DELETE":
        if sub is not None:
            raise KubeError(405, "the server does not allow DELETE on a subresource")
        options = _json_body(body, content_type) if body.strip() else {}
        with api.store.lock:
            code, obj = api.store.delete(res, namespace, name, options)
            return code, copy.deepcopy(obj)
    raise KubeError(405, f"the server does not allow {method}")


def _serve_watch(
    api: FakeKubeAPI,
    handler: _Handler,
    res: Resource,
    namespace: str | None,
    selector: Selector,
    query: dict[str, str],
) -> None:
    rv_param = query.get("resourceVersion") or "0"
    try:
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        from_rv = int(rv_param)
    except ValueError as exc:
        raise KubeError(400, f"invalid watch parameter: {exc}") from exc
    bookmarks = parse_bool(query.get("allowWatchBookmarks"))
    w = Watch(res, namespace, selector, handler.connection, bookmarks)
    initial: list[tuple[str, Obj]] = []
    expired: Obj | None = None
    with api.store.lock:
        if api.store.closed:
            raise KubeError(503, "the fake API server is shutting down")
        if from_rv == 0:
            initial = [
                ("ADDED", obj)
                for (r, ns, _), obj in sorted(api.store.objects.items(), key=sort_key)
                if r == res and (namespace is None or ns == namespace) and selector.matches(obj)
            ]
        elif from_rv < api.store.compacted_rv:
            expired = KubeError(
                410,
                f"too old resource version: {from_rv} ({api.store.compacted_rv})",
                reason="Expired",
            ).status()
        else:
            for ev in api.store.history:
                if ev.rv > from_rv and (t := w.translate(ev)) is not None:
                    initial.append(t)
        if expired is None:
            api.store.watches.add(w)
    try:
        handler.begin_stream()
        if expired is not None:
            handler.write_line({"type": "ERROR", "object": expired})
            handler.end_stream()
            return
        for kind, obj in initial:
            handler.write_line({"type": kind, "object": obj})
        stream(handler, w, timeout, api.bookmark_interval, api.store)
    except OSError:
        handler.close_connection = True
    finally:
        with api.store.lock:
            api.store.watches.discard(w)
            w.ended = True


def stream(
    out: _Handler, w: Watch, timeout: float | None, bookmark_interval: float, store: Store
) -> None:
    """Send ``w``'s events to ``out`` until its timeout, a stop, or the peer going away."""
    now = time.monotonic()
    deadline = now + timeout if timeout else None
    next_bookmark = now + bookmark_interval if w.bookmarks else None
    while True:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            out.end_stream()
            return
        wait = 0.2
        for t in (deadline, next_bookmark):
            if t is not None:
                wait = min(wait, max(t - now, 0.0))
        try:
            item = w.queue.get(timeout=wait)
        except queue.Empty:
            if _peer_closed(w.sock):
                out.close_connection = True
                return
            if next_bookmark is not None and time.monotonic() >= next_bookmark:
                item = ("bookmark",)
            else:
                continue
        if item[0] == "stop":
            out.close_connection = True
            if item[1]:
                out.end_stream()
            return
        if item[0] == "bookmark":
            with store.lock:
                # Only once everything queued before is sent: the bookmark's promise.
                rv = store.rv if w.queue.empty() else None
            if rv is None:
                w.queue.put(item)
                continue
            out.write_line(
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
                next_bookmark = time.monotonic() + bookmark_interval
            continue
        _, kind, obj = item
        out.write_line({"type": kind, "object": obj})


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
        api.connection_opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            api = self.server.api
            api.connection_closed(self.connection)

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
        api.record(method, url.path, self.headers.get("Content-Type"))
        is_watch = parse_bool(query.get("watch")) or "/watch/" in url.path
        try:
            injected = api.injected(method, url.path, is_watch)
            if injected is not None:
                raise injected
            result = handle(api, self, method, url.path, query, body)
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
