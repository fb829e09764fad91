"""The HTTP server of a mesh process: the v2 REST API, and the routes other components mount.

aiohttp's server, on the process's own asyncio loop (the one its gRPC server, its mirror and its
router core run on), chosen by measurement (docs/rest.md). One `HttpApp` per process; the
composition root builds it, mounts routes, then starts it:

    app = HttpApp(max_body_bytes=64 * 2**20)
    app.mount_v2(V2Endpoints(backend))        # /v2/...
    app.add_route("GET", "/dashboard", page)  # anything else, before start()
    port = await app.start("0.0.0.0", 8008)
    ...
    await app.aclose()

**Adding routes.** A handler is an aiohttp handler, `async def handler(request: web.Request) ->
web.StreamResponse`; `app.add_route(method, path, handler)` mounts it (paths take aiohttp's
`{name}` placeholders, read with `request.match_info["name"]`). Mount from a function in your
own module, `def mount(app: HttpApp, ...) -> None`, called by the composition root: the router's
is `RouterServer._mount_http` (mesh/router/server.py), which is handed the router core, the
mirror and the management API; `mesh serve` uses the router's. Conventions every route keeps:

- errors are raised, not built: a MeshError (a pod's answer passed on is one too) becomes
  `{"error": "..."}` with its HTTP status from mesh.grpcstatus's table; aiohttp's own HTTP
  exceptions (`web.HTTPNotFound`, ...) keep their status and get the same body; anything
  else is logged and answered 500;
- read bodies with `await app.read_body(request)`: it enforces the body limit (the gRPC message
  limit) with a 413 before the body is read;
- JSON replies with `json_response(doc, status)`;
- streaming (server-sent events): `web.StreamResponse` with `content-type: text/event-stream`,
  `await response.prepare(request)`, then `await response.write(b"data: ...\\n\\n")` per event;
  an error after `prepare` can only be written as an event, so check what you can first.

How it fails: a port in use raises InvalidRequest from `start()`; a client's bad request is a
4xx with a message, never a 500 and never a dead process.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from mesh.errors import InvalidRequest, MeshError
from mesh.grpcstatus import http_status_of
from mesh.http.v2 import Reply, V2Endpoints

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(doc: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(doc, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


def error_response(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status)


def _reply(reply: Reply) -> web.Response:
    return web.Response(body=reply.body, status=reply.status, headers=reply.headers)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.text or exc.reason)
    except Exception as exc:
        if isinstance(exc, MeshError):
            return error_response(http_status_of(exc), str(exc))
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, f"{type(exc).__name__}: {exc}")


class HttpApp:
    """The process's HTTP server: routes are mounted before `start()`."""

    def __init__(self, max_body_bytes: int = 64 * 2**20, shutdown_timeout: float = 5.0) -> None:
        self.max_body_bytes = max_body_bytes
        self.web = web.Application(middlewares=[_errors], client_max_size=max_body_bytes)
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
        self.port = 0

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        self.web.router.add_route(method, path, handler)

    async def read_body(self, request: web.Request) -> bytes:
        """The whole body, refused with 413 when it is larger than the limit."""
        length = request.content_length
        if length is not None and length > self.max_body_bytes:
            raise web.HTTPRequestEntityTooLarge(
                max_size=self.max_body_bytes,
                actual_size=length,
                text=f"the body is {length} bytes; the limit is {self.max_body_bytes}",
            )
        return await request.read()

    # -- the v2 REST API -----------------------------------------------------------------------

    def mount_v2(self, endpoints: V2Endpoints, control_token: str | None = None) -> None:
        """The v2 REST API; with `control_token`, repository load and unload require
        `authorization: Bearer <token>` (the management API's token)."""
        e = endpoints

        def authorize(request: web.Request) -> None:
            if control_token is None:
                return
            if request.headers.get("authorization") != f"Bearer {control_token}":
                raise web.HTTPUnauthorized(text="a bearer token is required")

        async def server_metadata(request: web.Request) -> web.StreamResponse:
            return _reply(await e.server_metadata())

        async def live(request: web.Request) -> web.StreamResponse:
            return _reply(await e.live())

        async def ready(request: web.Request) -> web.StreamResponse:
            return _reply(await e.ready())

        async def model_metadata(request: web.Request) -> web.StreamResponse:
            m = request.match_info
            return _reply(await e.model_metadata(m["model"], m.get("version", ""), request.headers))

        async def model_ready(request: web.Request) -> web.StreamResponse:
            m = request.match_info
            return _reply(await e.model_ready(m["model"], m.get("version", ""), request.headers))

        async def infer(request: web.Request) -> web.StreamResponse:
            m = request.match_info
            body = await self.read_body(request)
            return _reply(await e.infer(m["model"], m.get("version", ""), request.headers, body))

        async def index(request: web.Request) -> web.StreamResponse:
            return _reply(await e.repository_index(await self.read_body(request)))

        async def load(request: web.Request) -> web.StreamResponse:
            authorize(request)
            body = await self.read_body(request)
            return _reply(await e.repository_load(request.match_info["model"], body))

        async def unload(request: web.Request) -> web.StreamResponse:
            authorize(request)
            body = await self.read_body(request)
            return _reply(await e.repository_unload(request.match_info["model"], body))

        add = self.add_route
        add("GET", "/v2", server_metadata)
        add("GET", "/v2/health/live", live)
        add("GET", "/v2/health/ready", ready)
        for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            add("GET", base, model_metadata)
            add("GET", f"{base}/ready", model_ready)
            add("POST", f"{base}/infer", infer)
        add("POST", "/v2/repository/index", index)
        add("POST", "/v2/repository/models/{model}/load", load)
        add("POST", "/v2/repository/models/{model}/unload", unload)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> int:
        """Listen on host:port (0 picks a free port); the bound port."""
        runner = web.AppRunner(self.web, access_log=None, shutdown_timeout=self._shutdown_timeout)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=tls, reuse_port=False)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise InvalidRequest(f"cannot listen for HTTP on {host}:{port}: {exc}") from exc
        self._runner = runner
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else port
        return self.port

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def server_tls(cert: Any, key: Any, ca: Any = None) -> ssl.SSLContext:
    """A TLS context for the HTTP port from the same files as the gRPC port's; with `ca`,
    clients must present a certificate signed by it."""
    # Not create_default_context: with `ca` it would also take client certificates that the
    # system's CAs signed (mesh.tls._context).
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    if ca is not None:
        context.load_verify_locations(str(ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context
