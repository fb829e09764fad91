"""REST against gRPC, through the router and on `mesh serve`, with KServe's and MLServer's REST
servers beside them in the same run.

    .venv/bin/python bench/rest.py                      # about 3 minutes on 2 cores
    .venv/bin/python bench/rest.py --seconds 3 --rounds 1 --no-kserve --no-mlserver

One XGBoost booster (100 trees, depth 6, 64 features) made on the spot (mesh.examples), served
by three targets, one after another:

1. **router**: `mesh up` with one pod (etcd, the pod with its puller, the router, as child
   processes: mesh.up.local_mesh), the model registered and loaded through the management API;
2. **serve**: `mesh serve --models DIR` (router and pod in one process, no etcd);
3. **kserve** (unless --no-kserve): the installed kserve package's ModelServer (uvicorn, one
   worker, its v2 REST), with a `kserve.Model` whose predict is the booster's
   `inplace_predict`: a peer, run beside the mesh on the same machine in the same run;
4. **mlserver** (unless --no-mlserver): MLServer 1.7.1 with its own XGBoost runtime, in the
   virtual environment bench/peers.py installs under --cache (made on first use),
   `parallel_workers` 0, one XGBoost thread; JSON only (it has no binary tensor extension).

Each target is driven by a closed-loop client in a process of its own (concurrency
--concurrency), with bodies built once: **JSON batch 1** (a v2 JSON body; for gRPC, the same
request with raw contents, the protocol's normal form) and **binary batch 32** (the binary
tensor extension: JSON header plus the raw FP32 bytes; for gRPC, raw contents). gRPC goes
through grpc.aio with a generic stub that neither serializes nor parses; REST through aiohttp.
Per cell: --seconds after a one-second warm-up, cells in alternating order over --rounds
rounds. Every answer's status is checked; every first answer is compared with the booster's own
prediction in this process.

Reported per target and workload: req/s, p50 and p99, and ratios from the same run: REST/gRPC
on the same target, and each REST target against the router's REST. Client and servers share
the machine's cores (and on the project's machines other work shared them too): the ratios are
the result, the figures only this machine's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mesh.lifecycle import free_port  # noqa: E402

MODEL = "xgb"
FEATURES = 64


def sample(batch: int) -> np.ndarray[Any, Any]:
    return np.random.default_rng(batch).standard_normal((batch, FEATURES)).astype(np.float32)


def json_body(x: np.ndarray[Any, Any]) -> tuple[bytes, dict[str, str]]:
    doc = {"inputs": [{"name": "input__0", "datatype": "FP32", "shape": list(x.shape),
                       "data": x.reshape(-1).tolist()}]}  # fmt: skip
    return json.dumps(doc).encode(), {"content-type": "application/json"}


def binary_body(x: np.ndarray[Any, Any]) -> tuple[bytes, dict[str, str]]:
    raw = x.tobytes()
    doc = {
        "inputs": [{"name": "input__0", "datatype": "FP32", "shape": list(x.shape),
                    "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": "output__0", "parameters": {"binary_data": True}}],
    }  # fmt: skip
    header = json.dumps(doc).encode()
    return header + raw, {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }


def grpc_body(x: np.ndarray[Any, Any]) -> bytes:
    from mesh.gen import grpc_predict_v2_pb2 as pb

    request = pb.ModelInferRequest(model_name=MODEL)
    tensor = request.inputs.add(name="input__0", datatype="FP32")
    tensor.shape.extend(x.shape)
    request.raw_input_contents.append(x.tobytes())
    return request.SerializeToString()


# -- the clients (each in a spawned process) -----------------------------------------------------


def _rest_output(data: bytes, headers: Any) -> np.ndarray[Any, Any]:
    n = headers.get("inference-header-content-length")
    if n is not None:
        return np.frombuffer(data[int(n) :], np.float32)
    doc = json.loads(data)
    return np.array(doc["outputs"][0]["data"], np.float32)


async def _rest_loop(url: str, body: bytes, headers: dict[str, str], seconds: float, c: int) -> Any:
    import aiohttp

    latencies: list[float] = []
    errors: dict[str, int] = {}
    first: list[Any] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=c)) as session:

        async def worker(until: float, record: bool) -> None:
            while time.perf_counter() < until:
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    data = await response.read()
                    if response.status != 200:
                        key = f"{response.status}: {data[:200]!r}"
                        errors[key] = errors.get(key, 0) + 1
                    elif not first:
                        first.append(_rest_output(data, response.headers).tolist())
                if record:
                    latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker(time.perf_counter() + 1.0, False) for _ in range(c)))
        started = time.perf_counter()
        await asyncio.gather(*(worker(started + seconds, True) for _ in range(c)))
        elapsed = time.perf_counter() - started
    return latencies, elapsed, errors, first[0] if first else None


async def _grpc_loop(address: str, body: bytes, seconds: float, c: int) -> Any:
    from grpc import aio

    from mesh.gen import grpc_predict_v2_pb2 as pb

    latencies: list[float] = []
    errors: dict[str, int] = {}
    first: list[Any] = []
    options = [("grpc.max_receive_message_length", 64 * 2**20)]
    async with aio.insecure_channel(address, options=options) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")

        async def worker(until: float, record: bool) -> None:
            while time.perf_counter() < until:
                started = time.perf_counter()
                try:
                    data = await call(body, timeout=60)
                    if not first:
                        response = pb.ModelInferResponse.FromString(data)
                        first.append(
                            np.frombuffer(response.raw_output_contents[0], np.float32).tolist()
                        )
                except aio.AioRpcError as exc:
                    key = f"{exc.code().name}: {exc.details()}"
                    errors[key] = errors.get(key, 0) + 1
                if record:
                    latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker(time.perf_counter() + 1.0, False) for _ in range(c)))
        started = time.perf_counter()
        await asyncio.gather(*(worker(started + seconds, True) for _ in range(c)))
        elapsed = time.perf_counter() - started
    return latencies, elapsed, errors, first[0] if first else None


def _client_main(kind: str, args: tuple[Any, ...], out: Any) -> None:
    loop = _rest_loop if kind == "rest" else _grpc_loop
    out.send(asyncio.run(loop(*args)))  # type: ignore[operator]


def run_client(kind: str, args: tuple[Any, ...], budget: float) -> Any:
    ctx = multiprocessing.get_context("spawn")
    here, there = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_client_main, args=(kind, args, there))
    proc.start()
    if not here.poll(budget):
        proc.kill()
        raise RuntimeError(f"the {kind} client did not finish within {budget:.0f} s")
    result = here.recv()
    proc.join(10)
    return result


# -- the targets ---------------------------------------------------------------------------------


def _wait_http(url: str, proc: subprocess.Popen[bytes] | None, timeout: float = 90) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as response:
            if response.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} was not ready within {timeout:.0f} s")


@contextlib.contextmanager
def _process(cmd: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MESH_POD_RUNTIMES": '["xgboost"]'}
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, env=env, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextlib.contextmanager
def router_target(models: Path, log: Path) -> Iterator[dict[str, Any]]:
    from mesh.gen import management_pb2 as mpb
    from mesh.gen import management_pb2_grpc
    from mesh.up import UpSettings, local_mesh

    ns = UpSettings(storage=models, pods=1, capacity="1Gi", port=free_port(), rest_port=free_port())
    os.environ["MESH_POD_RUNTIMES"] = '["xgboost"]'
    with log.open("ab") as out, contextlib.redirect_stdout(sys.stderr):
        saved = os.dup(2)
        os.dup2(out.fileno(), 2)
        try:
            context = local_mesh(ns)
            info = context.__enter__()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    try:
        import grpc

        with grpc.insecure_channel(info.router.address) as channel:
            stub = management_pb2_grpc.ManagementStub(channel)  # type: ignore[no-untyped-call]
            stub.RegisterModel(
                mpb.RegisterModelRequest(
                    model_id=MODEL, format="xgboost", storage_path=MODEL, load_now=True
                ),
                timeout=120,
            )
        yield {"grpc": info.router.address, "rest": f"http://{info.router.rest}"}
    finally:
        context.__exit__(None, None, None)


@contextlib.contextmanager
def serve_target(models: Path, log: Path) -> Iterator[dict[str, Any]]:
    port, rest = free_port(), free_port()
    cmd = [sys.executable, "-m", "mesh", "serve", "--models", str(models), "--port", str(port),
           "--rest-port", str(rest), "--capacity", "1Gi"]  # fmt: skip
    with _process(cmd, log) as proc:
        _wait_http(f"http://127.0.0.1:{rest}/v2/health/ready", proc)
        yield {"grpc": f"127.0.0.1:{port}", "rest": f"http://127.0.0.1:{rest}"}


_KSERVE_SERVER = """
import sys
import numpy as np
import xgboost as xgb
import kserve
from kserve import InferRequest, InferResponse, InferOutput

class Booster(kserve.Model):
    def __init__(self, name, path):
        super().__init__(name)
        self.path = path
        self.load()

    def load(self):
        self.booster = xgb.Booster(model_file=self.path)
        self.booster.set_param({"nthread": 1})
        self.ready = True
        return True

    async def predict(self, payload, headers=None, response_headers=None):
        x = payload.inputs[0].as_numpy()
        y = self.booster.inplace_predict(x).astype(np.float32)
        out = InferOutput(name="output__0", shape=list(y.shape), datatype="FP32")
        binary = any(o.parameters and o.parameters.get("binary_data") for o in
                     (payload.request_outputs or []))
        out.set_data_from_numpy(y, binary_data=bool(binary))
        return InferResponse(model_name=self.name, infer_outputs=[out],
                             response_id=payload.id or "", use_binary_outputs=bool(binary))

if __name__ == "__main__":
    kserve.ModelServer(http_port=int(sys.argv[2]), grpc_port=int(sys.argv[3]), workers=1,
                       enable_grpc=False, enable_docs_url=False).start(
        [Booster("xgb", sys.argv[1])])
"""


@contextlib.contextmanager
def kserve_target(models: Path, log: Path, tmp: Path) -> Iterator[dict[str, Any]]:
    script = tmp / "kserve_server.py"
    script.write_text(_KSERVE_SERVER)
    port = free_port()
    cmd = [sys.executable, str(script), str(models / MODEL / "model.ubj"), str(port),
           str(free_port())]  # fmt: skip
    with _process(cmd, log) as proc:
        _wait_http(f"http://127.0.0.1:{port}/v2/health/ready", proc)
        yield {"grpc": None, "rest": f"http://127.0.0.1:{port}"}


@contextlib.contextmanager
def mlserver_target(models: Path, log: Path, tmp: Path, cache: Path) -> Iterator[dict[str, Any]]:
    """MLServer 1.7.1 with its own XGBoost runtime, in the virtual environment bench/peers.py
    installs (under --cache; installed on first use), inference in the server's process
    (parallel_workers 0) with one XGBoost thread, as bench/peers.py runs it."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from peers import MLSERVER

    python = MLSERVER.ensure(cache)
    import xgboost as xgb

    home = tmp / "mlserver"
    (home / MODEL).mkdir(parents=True)
    xgb.Booster(model_file=str(models / MODEL / "model.ubj")).save_model(
        str(home / MODEL / "model.json")
    )
    (home / MODEL / "model-settings.json").write_text(json.dumps({
        "name": MODEL, "implementation": "mlserver_xgboost.XGBoostModel",
        "parameters": {"uri": "./model.json"},
    }))  # fmt: skip
    port = free_port()
    (home / "settings.json").write_text(json.dumps({
        "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
        "parallel_workers": 0,
    }))  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [str(python.parent / "mlserver"), "start", str(home)], stdout=out, stderr=out,
            env=env, cwd=home, start_new_session=True,
        )  # fmt: skip
    try:
        _wait_http(f"http://127.0.0.1:{port}/v2/models/{MODEL}/ready", proc, timeout=180)
        yield {"grpc": None, "rest": f"http://127.0.0.1:{port}", "json_only": True}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# -- the run -------------------------------------------------------------------------------------


WORKLOADS = {"json-b1": (1, json_body), "binary-b32": (32, binary_body)}


def pooled(runs: list[Any]) -> dict[str, Any]:
    latencies = sorted(v for run in runs for v in run[0])
    seconds = sum(run[1] for run in runs)
    errors: dict[str, int] = {}
    for run in runs:
        for k, n in run[2].items():
            errors[k] = errors.get(k, 0) + n
    return {
        "rps": len(latencies) / seconds if seconds else 0.0,
        "p50_ms": statistics.median(latencies) * 1e3 if latencies else float("nan"),
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3 if latencies else float("nan"),
        "requests": len(latencies),
        "errors": errors,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--no-kserve", action="store_true", help="leave KServe out")
    parser.add_argument("--no-mlserver", action="store_true", help="leave MLServer out")
    parser.add_argument(
        "--cache", type=Path, default=Path.home() / ".cache" / "mesh-bench",
        help="where bench/peers.py keeps the peers' environments (MLServer's is made there)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()

    import xgboost as xgb

    from mesh import examples

    results: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-rest-") as tmp_name:
        tmp = Path(tmp_name)
        models = tmp / "models"
        examples.xgboost_booster(models / MODEL, n_features=FEATURES, n_trees=100, depth=6)
        booster = xgb.Booster(model_file=str(models / MODEL / "model.ubj"))
        log = tmp / "servers.log"
        targets: list[tuple[str, Any]] = [
            ("router", lambda: router_target(models, log)),
            ("serve", lambda: serve_target(models, log)),
        ]
        if not args.no_kserve:
            targets.append(("kserve", lambda: kserve_target(models, log, tmp)))
        if not args.no_mlserver:
            targets.append(
                ("mlserver", lambda: mlserver_target(models, log, tmp, args.cache / "peers"))
            )
        for target, start in targets:
            with start() as where:
                for workload, (batch, make) in WORKLOADS.items():
                    if where.get("json_only") and make is not json_body:
                        # MLServer does not speak the binary tensor extension.
                        print(f"{target}: no {workload} (no binary tensors)", file=sys.stderr)
                        continue
                    x = sample(batch)
                    want = booster.inplace_predict(x).astype(np.float32)
                    body, headers = make(x)
                    url = f"{where['rest']}/v2/models/{MODEL}/infer"
                    cells: dict[str, list[Any]] = {"rest": []}
                    if where["grpc"]:
                        cells["grpc"] = []
                    for r in range(args.rounds):
                        order = list(cells) if r % 2 == 0 else list(reversed(cells))
                        for proto in order:
                            budget = args.seconds + 60
                            if proto == "rest":
                                a: tuple[Any, ...] = (url, body, headers, args.seconds,
                                                      args.concurrency)  # fmt: skip
                            else:
                                a = (where["grpc"], grpc_body(x), args.seconds, args.concurrency)
                            run = run_client(proto, a, budget)
                            if run[3] is not None and not np.allclose(run[3], want, rtol=1e-5):
                                problems.append(f"{target} {proto} {workload}: wrong answer")
                            cells[proto].append(run)
                    for proto, runs in cells.items():
                        results[f"{target}/{proto}/{workload}"] = pooled(runs)
                        print(f"{target:>6} {proto:>4} {workload:<10} "
                              f"{results[f'{target}/{proto}/{workload}']['rps']:8.0f} req/s",
                              file=sys.stderr, flush=True)  # fmt: skip
        errors_in_log = [
            line for line in log.read_text(errors="replace").splitlines()
            if " ERROR " in line or "Traceback" in line
        ]  # fmt: skip

    print(f"\nXGBoost (100 trees, 64 features), closed loop c={args.concurrency}, "
          f"{args.rounds} x {args.seconds:.0f} s per cell\n")  # fmt: skip
    print("| target | protocol | workload | req/s | p50 ms | p99 ms | REST/gRPC req/s | "
          "REST vs router REST | errors |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for key, row in results.items():
        target, proto, workload = key.split("/")
        grpc_row = results.get(f"{target}/grpc/{workload}")
        ratio = f"{row['rps'] / grpc_row['rps']:.2f}" if proto == "rest" and grpc_row else ""
        router = results.get(f"router/rest/{workload}")
        vs = f"{row['rps'] / router['rps']:.2f}" if proto == "rest" and router else ""
        errors = sum(row["errors"].values())
        print(f"| {target} | {proto} | {workload} | {row['rps']:.0f} | {row['p50_ms']:.2f} | "
              f"{row['p99_ms']:.2f} | {ratio} | {vs} | {errors} |")  # fmt: skip
    for key, row in results.items():
        for message, n in row["errors"].items():
            print(f"errors {key}: {n} x {message}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print(f"server log lines with ERROR or a traceback: {len(errors_in_log)}")
    for line in errors_in_log[:5]:
        print(f"    {line[:200]}")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "problems": problems}, indent=1))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
