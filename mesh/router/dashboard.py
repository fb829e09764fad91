"""The capacity page: `/dashboard` on the router's REST port, live, with every asset served here.

    mount(app, lambda: snapshot(mirror, activity, failures, time.time()), token=None)

adds four routes to anything with aiohttp's `add_route(method, path, handler)` (mesh.http's
HttpApp, or an aiohttp router):

| route                       | what                                                        |
|-----------------------------|-------------------------------------------------------------|
| `GET /dashboard`            | the page (HTML), which polls the JSON every 2 s             |
| `GET /dashboard/app.js`     | its script (no framework, no CDN: nothing leaves the mesh)  |
| `GET /dashboard/app.css`    | its style sheet                                             |
| `GET /dashboard/api/mesh`   | the mesh as JSON (`page_data`), for the page or for scripts |

`page_data` is the protocol-neutral part: a snapshot of the router's mirror
(mesh.router.overview) turned into what the page draws: each pod's tiers (used against
capacity: the device, and the host tier where the pod has one, with the models demoted to it),
its models most recently used first with their ages, its LRU age, heartbeat and draining
flag, and the mesh's loads, evictions, misses and failures per minute over the window.

With a management token set on the router, the JSON asks for it too (`Authorization: Bearer`,
or the page's `#token=...` fragment, which never reaches a server log); the page and its assets
hold no data and stay open. How it fails: a router that cannot reach etcd serves its last
mirror (the page shows each heartbeat's age, so stale data is visible as such).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, Protocol

from aiohttp import web

from mesh.router.overview import Overview, PodView

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_ASSETS = {
    "/dashboard": ("dashboard.html", "text/html"),
    "/dashboard/app.js": ("dashboard.js", "application/javascript"),
    "/dashboard/app.css": ("dashboard.css", "text/css"),
}
# The page runs only what the router serves: no inline script, no other origin.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class Routes(Protocol):
    def add_route(self, method: str, path: str, handler: Handler) -> Any: ...


def page_data(view: Overview) -> dict[str, Any]:
    """What the page draws, from a snapshot: plain JSON types, times as unix seconds and ages
    in seconds against the snapshot's `now`."""
    now = view.now
    pods = []
    for p in view.pods:
        pods.append(
            {
                "pod_id": p.pod_id,
                "address": p.address,
                "tiers": _tiers(p),
                "device": p.device,
                "host_models": list(p.host_models),
                "capacity": p.capacity,
                "used": p.used,
                "models": [
                    {
                        "model_id": m.model_id,
                        "state": m.state,
                        "size": m.size,
                        "idle": round(now - m.last_used, 1) if m.last_used else None,
                    }
                    for m in p.models
                ],
                "lru_age": round(now - p.lru_time, 1) if p.lru_time else None,
                "heartbeat_age": round(now - p.updated_at, 1) if p.updated_at else None,
                "draining": p.draining,
                "loading": p.loading,
                "in_flight": p.in_flight,
                "labels": dict(p.labels),
                "recent": dict(p.recent),
            }
        )
    failures = [
        {"model_id": m.model_id, "message": m.last_failure} for m in view.models if m.last_failure
    ]
    activity = [
        {
            "start": m.start,
            "loads": m.loads,
            "evictions": m.evictions,
            "misses": m.misses,
            "failures": m.failures,
        }
        for m in view.activity
    ]
    lru_ages = [now - p.lru_time for p in view.pods if p.lru_time]
    return {
        "now": now,
        "totals": {
            "pods": len(pods),
            "capacity": sum(p.capacity for p in view.pods),
            "used": sum(p.used for p in view.pods),
            "models": len(view.models),
            "loaded": sum(1 for m in view.models if m.state == "LOADED"),
            "copies": sum(len(p.models) for p in view.pods),
            "failed": len(failures),
            # The mesh's approximate global LRU age: its oldest pod-level LRU.
            "lru_age": round(max(lru_ages), 1) if lru_ages else None,
        },
        "pods": pods,
        "failures": failures,
        "activity": activity,
        "vmodels": [
            {
                "vmodel_id": v.vmodel_id,
                "active": v.active,
                "target": v.target,
                "transition": v.transition,
            }
            for v in view.vmodels
        ],
    }


def _tiers(pod: PodView) -> list[dict[str, Any]]:
    """Used against capacity, the device's first (its name: cuda:0, cpu), then the host tier
    where the pod has one (models demoted from the device, brought back without a pull)."""
    # A CPU pod's models live in the host's memory (device "host" or "cpu"): one "memory" bar.
    on_gpu = pod.device not in ("", "host", "cpu")
    name = f"device {pod.device}" if on_gpu else "memory"
    tiers = [{"name": name, "capacity": pod.capacity, "used": pod.used}]
    if pod.host_capacity:
        tiers.append({"name": "host", "capacity": pod.host_capacity, "used": pod.host_used})
    return tiers


def _asset(name: str) -> bytes:
    return resources.files("mesh.router").joinpath("assets", name).read_bytes()


def mount(routes: Routes, source: Callable[[], Overview], token: str | None = None) -> None:
    """Add the page's routes; `source()` returns a fresh snapshot (cheap: dict reads)."""
    bodies = {path: (_asset(name), kind) for path, (name, kind) in _ASSETS.items()}
    headers = {
        "Cache-Control": "no-cache",
        "Content-Security-Policy": _CSP,
        "X-Content-Type-Options": "nosniff",
    }

    def page(path: str) -> Handler:
        body, kind = bodies[path]

        async def serve(request: web.Request) -> web.StreamResponse:
            return web.Response(body=body, content_type=kind, charset="utf-8", headers=headers)

        return serve

    async def data(request: web.Request) -> web.StreamResponse:
        if token is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                raise web.HTTPUnauthorized(text="the management token is required")
        return web.json_response(page_data(source()), headers={"Cache-Control": "no-store"})

    for path in _ASSETS:
        routes.add_route("GET", path, page(path))
    routes.add_route("GET", "/dashboard/api/mesh", data)
