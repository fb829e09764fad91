"""Which HTTP stack should carry the router's REST front? One short measurement.

    .venv/bin/python bench/http_stacks.py                 # about 1.5 minutes on 2 cores
    .venv/bin/python bench/http_stacks.py --seconds 8 --rounds 3

Each candidate serves the same endpoint, `POST /v2/models/{m}/infer`, over the same code
(mesh.http.v2.V2Endpoints on a RouterBackend: the REST body decoded by mesh.http.codec, then
the router's own forward to a pod, the answer encoded back), in a process of its own holding an
embedded mesh (a router and a pod on the in-memory store, as `mesh serve`), with an XGBoost
booster (100 trees, 64 features) already loaded. Only the HTTP server around the endpoint
differs:

- aiohttp: `aiohttp.web` on the asyncio loop the gRPC server runs on;
- uvicorn: starlette on uvicorn with httptools, on that asyncio loop;
- uvicorn-uvloop: the same, with the whole process (gRPC included) on uvloop;
- granian: starlette on granian's embedded server (Rust HTTP, ASGI) on that loop.

The candidates other than aiohttp are not dependencies of mesh: install them to run this
(`.venv/bin/pip install 'uvicorn[standard]' starlette granian`); `--stacks` picks a subset.

The client runs in a process of its own (aiohttp, closed loop, concurrency --concurrency,
JSON batch 1), for --seconds per cell after a one-second warm-up, the stacks in alternating
order over --rounds rounds. Reported per stack: req/s and p50/p99 pooled over rounds, and the
ratio of req/s to aiohttp's from the same run. Client and server share the machine's cores (and
on the project's machines other work shared them too): compare the ratios, not the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

STACKS = ("aiohttp", "uvicorn", "uvicorn-uvloop", "granian")
MODEL = "xgb"


# -- the server side -----------------------------------------------------------------------------


async def _mesh(models: Path) -> Any:
    from mesh.cluster.codec import Keys
    from mesh.cluster.memory import MemoryStore
    from mesh.embedded import register_directory
    from mesh.http.v2 import V2Endpoints
    from mesh.pod.artifacts import DirectoryArtifacts
    from mesh.pod.server import PodServer
    from mesh.pod.settings import PodSettings
    from mesh.router.rest import RouterBackend
    from mesh.router.server import RouterServer
    from mesh.router.settings import RouterSettings

    store = MemoryStore()
    await register_directory(store, Keys(), models)
    pod = PodServer(
        PodSettings(host="127.0.0.1", port=0, metrics_port=None, pod_id="bench", capacity=2**30),
        artifacts=DirectoryArtifacts(models),
        store=store,
    )
    await pod.start()
    router = RouterServer(
        RouterSettings(host="127.0.0.1", port=0, metrics_port=None, rest_port=None), store=store
    )
    await router.start()
    assert router.router is not None
    await router.router.ensure_loaded(MODEL)
    backend = RouterBackend(router.router, router.management, lambda: True)
    return V2Endpoints(backend), (router, pod, store)


def _starlette(endpoints: Any) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def infer(request: Request) -> Response:
        body = await request.body()
        reply = await endpoints.infer(request.path_params["model"], "", dict(request.headers), body)
        return Response(reply.body, reply.status, headers=dict(reply.headers))

    return Starlette(routes=[Route("/v2/models/{model}/infer", infer, methods=["POST"])])


async def _serve(stack: str, port: int, models: Path) -> None:
    endpoints, parts = await _mesh(models)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    closer: Any
    if stack == "aiohttp":
        from aiohttp import web

        async def infer(request: web.Request) -> web.Response:
            body = await request.read()
            reply = await endpoints.infer(
                request.match_info["model"], "", {k.lower(): v for k, v in request.headers.items()},
                body,
            )  # fmt: skip
            return web.Response(body=reply.body, status=reply.status, headers=reply.headers)

        app = web.Application()
        app.router.add_post("/v2/models/{model}/infer", infer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        closer = runner.cleanup
    elif stack.startswith("uvicorn"):
        import uvicorn

        config = uvicorn.Config(
            _starlette(endpoints), host="127.0.0.1", port=port, http="httptools",
            lifespan="off", access_log=False, log_level="warning",
        )  # fmt: skip
        server = uvicorn.Server(config)
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        task = asyncio.create_task(server.serve())
        while not server.started:  # noqa: ASYNC110 (uvicorn offers no event to wait on)
            await asyncio.sleep(0.05)

        async def closer() -> None:
            server.should_exit = True
            await task

    else:
        from granian.constants import Interfaces
        from granian.server.embed import Server

        server = Server(
            _starlette(endpoints), address="127.0.0.1", port=port, interface=Interfaces.ASGI,
            log_enabled=False,
        )  # fmt: skip
        task = asyncio.create_task(server.serve())
        await asyncio.sleep(1.0)

        async def closer() -> None:
            server.stop()
            await task

    print("ready", flush=True)
    await stop.wait()
    await closer()
    router, pod, store = parts
    await router.aclose()
    await pod.aclose()
    await store.aclose()


# -- the client side -----------------------------------------------------------------------------


async def _client(port: int, seconds: float, concurrency: int) -> dict[str, Any]:
    import aiohttp

    body = json.dumps(
        {"inputs": [{"name": "input__0", "shape": [1, 64], "datatype": "FP32",
                     "data": [0.1 * i for i in range(64)]}]}
    ).encode()  # fmt: skip
    url = f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer"
    latencies: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        headers={"content-type": "application/json"},
    ) as session:

        async def worker(until: float, record: bool) -> None:
            nonlocal errors
            while time.perf_counter() < until:
                started = time.perf_counter()
                async with session.post(url, data=body) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                if record:
                    latencies.append(time.perf_counter() - started)

        warm = time.perf_counter() + 1.0
        await asyncio.gather(*(worker(warm, False) for _ in range(concurrency)))
        started = time.perf_counter()
        until = started + seconds
        await asyncio.gather(*(worker(until, True) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"requests": len(latencies), "seconds": elapsed, "latencies": latencies,
            "errors": errors}  # fmt: skip


def _run_cell(stack: str, models: Path, seconds: float, concurrency: int) -> dict[str, Any]:
    from mesh.lifecycle import free_port

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", stack, "--port", str(port), "--models", str(models)],
        stdout=subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if b"ready" not in line:
            raise SystemExit(f"{stack}: the server did not start")
        out = subprocess.run(
            [sys.executable, __file__, "--client", "--port", str(port), "--seconds", str(seconds),
             "--concurrency", str(concurrency)],
            capture_output=True, check=True, env=env,
        )  # fmt: skip
        return dict(json.loads(out.stdout))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", choices=STACKS)
    parser.add_argument("--client", action="store_true")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--models", type=Path)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--stacks", default=",".join(STACKS))
    args = parser.parse_args()
    if args.serve:
        if args.serve == "uvicorn-uvloop":
            import uvloop

            uvloop.run(_serve(args.serve, args.port, args.models))
        else:
            asyncio.run(_serve(args.serve, args.port, args.models))
        return
    if args.client:
        print(json.dumps(asyncio.run(_client(args.port, args.seconds, args.concurrency))))
        return
    from mesh import examples

    stacks = args.stacks.split(",")
    needs = {"uvicorn": ("uvicorn", "starlette", "httptools"),
             "uvicorn-uvloop": ("uvicorn", "starlette", "httptools", "uvloop"),
             "granian": ("granian", "starlette"), "aiohttp": ("aiohttp",)}  # fmt: skip
    import importlib.util

    for stack in stacks:
        missing = [m for m in needs[stack] if importlib.util.find_spec(m) is None]
        if missing:
            raise SystemExit(f"{stack} needs {', '.join(missing)}: pip install them or drop it "
                             "from --stacks")  # fmt: skip
    pooled: dict[str, dict[str, Any]] = {s: {"requests": 0, "seconds": 0.0, "latencies": [],
                                             "errors": 0} for s in stacks}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp)
        examples.xgboost_booster(models / MODEL, n_trees=100)
        for r in range(args.rounds):
            order = stacks if r % 2 == 0 else list(reversed(stacks))
            for stack in order:
                cell = _run_cell(stack, models, args.seconds, args.concurrency)
                for key in ("requests", "seconds", "errors"):
                    pooled[stack][key] += cell[key]
                pooled[stack]["latencies"] += cell["latencies"]
                print(f"round {r + 1} {stack}: {cell['requests'] / cell['seconds']:.0f} req/s",
                      file=sys.stderr)  # fmt: skip
    base = pooled[stacks[0]]["requests"] / pooled[stacks[0]]["seconds"]
    print(f"REST infer through the router, XGBoost JSON batch 1, c={args.concurrency}, "
          f"{args.rounds} x {args.seconds:.0f} s per stack")  # fmt: skip
    print(f"| stack | req/s | p50 ms | p99 ms | req/s vs {stacks[0]} | errors |")
    print("|---|---|---|---|---|---|")
    for stack in stacks:
        p = pooled[stack]
        rate = p["requests"] / p["seconds"]
        lat = sorted(p["latencies"])
        p50 = statistics.median(lat) * 1e3
        p99 = lat[int(len(lat) * 0.99)] * 1e3
        print(f"| {stack} | {rate:.0f} | {p50:.2f} | {p99:.2f} | {rate / base:.2f} | "
              f"{p['errors']} |")  # fmt: skip


if __name__ == "__main__":
    main()
