"""Benchmark the router: its cost on a cache hit, and a whole mesh under a Zipf workload.

    .venv/bin/python bench/router.py            # about 3.5 minutes on 2 cores
    .venv/bin/python bench/router.py --quick    # about 1.3 minutes
    .venv/bin/python bench/router.py --rounds 4 --zipf-seconds 60 --json results.json

One run, two local meshes (`mesh.up.local_mesh`: etcd, pods each with its puller, a router, as
child processes), models built on the spot by mesh.examples:

1. **Hit path.** An ONNX MLP (64-256-256-10) and an XGBoost booster (100 trees, depth 6) are
   registered and loaded through the router's management API (1 pod, 1Gi: with two, the
   router's copy scaling may add a second copy of a model this hot, which the direct and proxy
   targets would not use). Each is then
   driven at batch 1 and client concurrency 1, 8 and 32 through four targets: **direct** (the
   pod that holds it, found with GetModelStatus; a pod answers a request whose model_name is a
   model it holds), the **router**, and a **bare proxy** (bench/passthrough_proxy.py: grpc.aio,
   a generic ModelInfer handler forwarding the request bytes to that pod over one grpc.aio
   channel: the floor of one Python hop), and **router-grpc**, a second router on the same mesh
   with --no-pod-frames (gRPC to the pod where the first router sends frames, mesh.frames: the
   same-run A/B of the router->pod transport). At each concurrency the targets run back to
   back, for `--rounds` rounds in alternating order (d-p-r, r-p-d, ...), so that the ratios
   compare cells measured seconds apart; a cell's figures pool its rounds. Reported: req/s,
   p50, p99, router/proxy and router/direct, each hop's added p50 over direct, and the CPU time
   per request of the client, the hop (router or proxy) and the pod over the measured window
   (/proc/PID/stat). Goals: a router within 15% of the bare proxy (req/s >= 0.85x and p50
   <= 1.15x the proxy's, every cell), both measured in the same run; and issue 13's, for each
   router: p50 at c=1 within 0.5 ms of direct's, req/s at c=32 >= 0.9x the proxy's. No peer
   figures: MLServer or KServe is compared only when run beside the mesh in the same run
   (bench/peers.py), not here.

2. **Zipf over 1,000 models.** Five copies of the small ONNX MLP are loaded through the router
   on the first mesh, one at a time, and the median of the pods' charged size (RuntimeStatus
   size_bytes, an RSS delta when nothing overlaps the load) is taken as one copy's size. A
   second mesh starts with 3 pods whose --capacity is 100 copies / 3 pods at that size (room
   for 10% of the models); 1,000 model ids are registered through the router, all pointing at
   the same artifact directory (each id loads its own copy), with size_estimate = that size. A
   closed-loop client (concurrency 8, one pre-serialized request per model) sends requests
   whose model is drawn from a Zipf distribution (s = 1.1, rank r = model z{r}, fixed seed):
   a warm-up that fills the caches, then the measured phase, continuing the same sequence.

   - **Loads, failed loads, evictions**: exact, from the pods' Prometheus counters
     (mesh_pod_load_seconds_count, mesh_pod_load_failures_total, mesh_pod_evictions_total,
     summed over the pods; each pod's metrics port is the one local_mesh's description gives),
     scraped before and after the measured phase. Nothing else loads models
     meanwhile, so every load was caused by a request.
   - **Hit ratio** = 1 - loads / requests. Requests that share one load (single flight) count
     as hits, so this is the share of requests that did not start a load.
   - **Miss latency**: the requests that were the first ever for their model. Their model had
     never been loaded anywhere, so each certainly waited for a whole miss (placement, the etcd
     claim, LoadModel with the puller and usually evictions, then the forward): a sample of
     misses chosen by a fact of the sequence, not by a latency threshold. **Hit latency**: the
     ten hottest models' requests (never evicted in practice), under the same load.
   - Reference: the hit ratio of one global LRU over the same request sequence, with as many
     models as the pods held at the end, and with 100.
   - Errors are counted by status, with the first message of each.
   - Per pod at the end: capacity, used, models held, mean charged size, and the pod process's
     RSS growth since the mesh started, per model held (what a copy really costs).

The clients are closed-loop, each in its own spawned process (no GIL shared with anything), with
one grpc.aio channel and pre-serialized requests sent through a generic unary_unary stub that
neither serializes nor parses (bench/harness.py's client). Client, router, proxy and pods share the
machine's cores: req/s are the whole system's. The meshes' pods run with
MESH_POD_RUNTIMES=["onnx","xgboost"] (no torch: nothing here needs it; --pod-runtimes changes it).
Their logs go to a file (--log-dir keeps them); lines with ERROR or a traceback are counted in
the report.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness, also as bench.router

from harness import (  # noqa: E402
    CHANNEL_OPTIONS,
    INFER_PATH,
    Server,
    closed_loop,
    cpu_name,
    git_state,
    in_client_process,
    percentile_ms,
    rss_bytes,
    table,
    verdict,
)

if TYPE_CHECKING:
    from mesh.up import LocalMesh

CONCURRENCIES = (1, 8, 32)
# router-grpc: a second router on the same mesh with --no-pod-frames (gRPC to the pod), for the
# same-run A/B of the router->pod transport (mesh.frames).
TARGETS = ("direct", "proxy", "router", "router-grpc")
N_FEATURES = 64

TARGET_PROXY_MARGIN = 0.15  # router within 15% of the bare proxy
# Issue 13: the router's p50 at c=1 within 0.5 ms of the pod's, its req/s at c=32 >= 0.9x the
# bare proxy's.
TARGET_HOP_MS = 0.5
TARGET_PROXY_RPS = 0.9

ZIPF_MODELS = 1000
ZIPF_FIT = 100  # copies that fit in all the pods together: 10% of the models
ZIPF_PODS = 3
ZIPF_S = 1.1
ZIPF_CONCURRENCY = 8
ZIPF_SEED = 7
PROBE_COPIES = 5
HOT_MODELS = 10

STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
REQUEST_TIMEOUT_S = 60.0


@dataclass
class Model:
    key: str  # "mlp" or "xgb"
    model_id: str  # the registered id
    storage_path: str  # directory under the storage root
    file: Path
    input_name: str
    output_name: str
    fmt: str


@dataclass
class Results:
    config: dict[str, Any] = field(default_factory=dict)
    hit: list[dict[str, Any]] = field(default_factory=list)
    placement: dict[str, str] = field(default_factory=dict)
    probe: dict[str, Any] = field(default_factory=dict)
    zipf: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# -- helpers -------------------------------------------------------------------------------------


def sample(batch: int, seed: int = 1) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).standard_normal((batch, N_FEATURES)).astype(np.float32)


def infer_request(model_id: str, input_name: str, x: np.ndarray[Any, Any]) -> bytes:
    from mesh.gen import grpc_predict_v2_pb2 as pb

    request = pb.ModelInferRequest(
        model_name=model_id,
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name=input_name, datatype="FP32", shape=list(x.shape)
            )
        ],
        raw_input_contents=[x.tobytes()],
    )
    return request.SerializeToString()


def child_env_setup(pod_runtimes: str) -> None:
    """The environment local_mesh's children inherit: the source tree first, the runtimes."""
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
    )
    os.environ["PYTHONUNBUFFERED"] = "1"
    if pod_runtimes:
        names = [r.strip() for r in pod_runtimes.split(",") if r.strip()]
        os.environ["MESH_POD_RUNTIMES"] = json.dumps(names)
    else:
        os.environ.pop("MESH_POD_RUNTIMES", None)


# -- processes -----------------------------------------------------------------------------------


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Point this process's fds 1 and 2 at `path` while children are started (they inherit
    them), so the mesh's logs land in a file, not in the report."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


@contextlib.contextmanager
def running_mesh(storage: Path, pods: int, capacity: str, log: Path) -> Iterator[LocalMesh]:
    """A local mesh (mesh.up.local_mesh), its logs in `log`; prints how long it took to start."""
    from mesh.up import UpSettings, local_mesh

    # rest_port 0: a free one, beside whatever else this machine serves.
    settings = UpSettings(storage=storage, pods=pods, capacity=capacity, port=0, rest_port=0)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        try:
            with output_to(log):
                info = stack.enter_context(local_mesh(settings))
        except BaseException as exc:
            tail = "\n    ".join(log.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"the mesh did not start: {exc!r}\n  log tail:\n    {tail}") from exc
        print(f"  mesh up in {time.perf_counter() - started:.1f} s", flush=True)
        try:
            yield info
        finally:
            # Children stop on SIGTERM; their last words go to the log, not the report.
            with output_to(log):
                stack.close()


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def metrics_ports(info: LocalMesh) -> dict[str, int]:
    """Each pod's Prometheus port, from the mesh's description."""
    return {pod.name: port_of(pod.metrics) for pod in info.pods}


def pod_addresses(info: LocalMesh) -> dict[str, str]:
    return {pod.name: pod.address for pod in info.pods}


def scrape(port: int) -> dict[str, float]:
    """Samples of one Prometheus endpoint, summed over labels: {sample name: value}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    totals: dict[str, float] = collections.defaultdict(float)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            totals[s.name] += s.value
    return dict(totals)


def scrape_labelled(port: int, name: str) -> dict[str, float]:
    """{label string: value} of one sample name."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))] = s.value
    return out


POD_COUNTERS = (
    "mesh_pod_load_seconds_count",
    "mesh_pod_load_failures_total",
    "mesh_pod_evictions_total",
)


def pod_counters(ports: dict[str, int]) -> dict[str, float]:
    totals = dict.fromkeys(POD_COUNTERS, 0.0)
    for port in ports.values():
        samples = scrape(port)
        for name in POD_COUNTERS:
            totals[name] += samples.get(name, 0.0)
    return totals


def runtime_status(address: str) -> Any:
    import grpc

    from mesh.gen import runtime_pb2 as rpb
    from mesh.gen import runtime_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = runtime_pb2_grpc.RuntimeStub(channel)  # type: ignore[no-untyped-call]
        return stub.RuntimeStatus(rpb.RuntimeStatusRequest(), timeout=30)


def log_problems(log: Path) -> list[str]:
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return [line for line in lines if " ERROR " in line or "Traceback" in line]


# -- closed-loop clients (each in its own spawned process) ---------------------------------------


async def _zipf_loop(
    target: str,
    payloads: list[bytes],
    sequence: np.ndarray[Any, Any],
    offset: int,
    concurrency: int,
    duration: float,
) -> dict[str, Any]:
    """Requests in the order of `sequence[offset:]` (model indexes) for `duration` seconds."""
    from grpc import aio

    async with aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        call: Any = channel.unary_unary(
            INFER_PATH, request_serializer=None, response_deserializer=None
        )
        await asyncio.wait_for(channel.channel_ready(), 15)
        seq = sequence.tolist()
        n = len(seq)
        position = offset
        # per request, indexed by its position in the sequence: latency (s), status
        latency: dict[int, float] = {}
        status: dict[int, str] = {}
        messages: dict[str, str] = {}  # the first message for each status code

        async def worker(deadline: float) -> None:
            nonlocal position
            clock = time.perf_counter
            while True:
                t0 = clock()
                if t0 >= deadline or position >= n:
                    return
                i = position
                position += 1
                try:
                    await call(payloads[seq[i]], timeout=REQUEST_TIMEOUT_S)
                    status[i] = "OK"
                except aio.AioRpcError as exc:
                    status[i] = code = exc.code().name
                    messages.setdefault(code, f"{code}: {exc.details()}")
                latency[i] = clock() - t0

        start = time.perf_counter()
        await asyncio.gather(*(worker(start + duration) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    issued = sorted(latency)
    return {
        "offset": offset,
        "end": position,
        "elapsed_s": elapsed,
        "positions": issued,
        "latency_s": [latency[i] for i in issued],
        "status": [status[i] for i in issued],
        "messages": messages,
    }


# -- 1. the hit path -----------------------------------------------------------------------------


def build_models(storage: Path) -> list[Model]:
    from mesh import examples

    mlp = examples.onnx_mlp(storage / "mlp")
    xgb = examples.xgboost_booster(storage / "xgb", n_features=N_FEATURES, n_trees=100, depth=6)
    return [
        Model("mlp", "bench-mlp", "mlp", mlp, "input", "output", "onnx"),
        Model("xgb", "bench-xgb", "xgb", xgb, "input__0", "output__0", "xgboost"),
    ]


def in_process_predict(model: Model, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    if model.fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(model.file), providers=["CPUExecutionProvider"])
        return np.asarray(session.run([model.output_name], {model.input_name: x})[0])
    import xgboost as xgb

    booster = xgb.Booster(params={"nthread": 1}, model_file=str(model.file))
    return np.asarray(booster.inplace_predict(x, validate_features=False))


def check_answer(address: str, model: Model, x: np.ndarray[Any, Any], what: str) -> None:
    import grpc

    from mesh.gen import grpc_predict_v2_pb2 as pb

    with grpc.insecure_channel(address) as channel:
        call: Any = channel.unary_unary(
            INFER_PATH, request_serializer=None, response_deserializer=None
        )
        raw = call(infer_request(model.model_id, model.input_name, x), timeout=120)
    response = pb.ModelInferResponse.FromString(raw)
    got = np.frombuffer(response.raw_output_contents[0], dtype=np.float32)
    want = in_process_predict(model, x).astype(np.float32).reshape(-1)
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-5):
        raise RuntimeError(f"{what}: the answer for {model.model_id} differs from in process")


def management(address: str) -> Any:
    import grpc

    from mesh.gen import management_pb2_grpc

    channel = grpc.insecure_channel(address)
    return channel, management_pb2_grpc.ManagementStub(channel)  # type: ignore[no-untyped-call]


def register(stub: Any, model_id: str, fmt: str, storage_path: str, size: int = 0) -> None:
    from mesh.gen import management_pb2 as mpb

    stub.RegisterModel(
        mpb.RegisterModelRequest(
            model_id=model_id,
            format=fmt,
            storage_path=storage_path,
            options=mpb.ModelOptions(size_estimate=size),
        ),
        timeout=60,
    )


def ensure_loaded(stub: Any, model_id: str) -> str:
    """Load through the router; the pod holding the (loaded) copy."""
    from mesh.gen import management_pb2 as mpb

    status = stub.EnsureLoaded(mpb.EnsureLoadedRequest(model_id=model_id), timeout=120)
    deadline = time.monotonic() + 10
    while True:
        loaded = [c.pod_id for c in status.copies if c.state == "loaded"]
        if loaded:
            return str(loaded[0])
        if time.monotonic() > deadline:
            raise RuntimeError(f"{model_id}: no loaded copy after EnsureLoaded: {status}")
        time.sleep(0.05)
        status = stub.GetModelStatus(mpb.GetModelStatusRequest(model_id=model_id), timeout=30)


def child_pids(info: LocalMesh) -> dict[str, int]:
    return {child.name: child.pid for child in info.children()}


def aggregate(row: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One cell from its rounds: requests and CPU summed, percentiles over every latency."""
    latencies = [v for r in runs for v in r["latencies"]]
    elapsed = sum(r["elapsed_s"] for r in runs)
    requests = len(latencies)
    cpu: dict[str, float] = collections.defaultdict(float)
    machine: dict[str, float] = collections.defaultdict(float)
    for r in runs:
        for name, seconds in r["cpu_s"].items():
            cpu[name] += seconds
        for name, seconds in r["machine_s"].items():
            machine[name] += seconds
    return {
        **row,
        "rounds": len(runs),
        "requests": requests,
        "elapsed_s": elapsed,
        "rps": requests / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile_ms(latencies, 50),
        "p99_ms": percentile_ms(latencies, 99),
        "mean_ms": float(np.mean(latencies)) * 1e3 if latencies else float("nan"),
        "cpu_ms_per_request": {k: v / requests * 1e3 for k, v in cpu.items()} if requests else {},
        "machine_ms_per_request": {k: v / requests * 1e3 for k, v in machine.items()}
        if requests
        else {},
        "machine_busy_share": machine["busy"] / (elapsed * (os.cpu_count() or 1))
        if elapsed > 0
        else float("nan"),
        "errors": sum(r["errors"] for r in runs),
        "first_error": next((r["error"] for r in runs if r["error"]), None),
    }


def bench_hits(
    info: LocalMesh,
    models: list[Model],
    warmup: float,
    duration: float,
    rounds: int,
    results: Results,
    log_dir: Path,
) -> None:
    channel, stub = management(info.router.address)
    with channel:
        for m in models:
            register(stub, m.model_id, m.fmt, m.storage_path)
            pod_id = ensure_loaded(stub, m.model_id)
            results.placement[m.model_id] = pod_id
    x = sample(1)
    payloads = {m.key: infer_request(m.model_id, m.input_name, x) for m in models}
    pids = child_pids(info)
    grpc_router = Server(
        "router-grpc",
        [
            sys.executable, "-m", "mesh", "router", "--etcd", info.etcd.url,
            "--host", "127.0.0.1", "--port", "0", "--no-rest", "--no-metrics",
            "--router-id", "bench-router-grpc", "--no-pod-frames",
        ],
        log_dir / "router-grpc.log",
        None,
        listening=r"router listening on \S+:(\d+)",
        startup_timeout=STARTUP_TIMEOUT_S,
        stop_timeout=STOP_TIMEOUT_S,
    )  # fmt: skip
    with grpc_router.running():
        assert grpc_router.proc is not None
        _bench_hits(info, models, warmup, duration, rounds, results, log_dir, pids, payloads,
                    grpc_router)  # fmt: skip


def _bench_hits(
    info: LocalMesh,
    models: list[Model],
    warmup: float,
    duration: float,
    rounds: int,
    results: Results,
    log_dir: Path,
    pids: dict[str, int],
    payloads: dict[str, bytes],
    grpc_router: Server,
) -> None:
    assert grpc_router.proc is not None
    for m in models:
        pod_id = results.placement[m.model_id]
        direct = pod_addresses(info)[pod_id]
        proxy = Server(
            "proxy",
            [
                sys.executable,
                str(ROOT / "bench" / "passthrough_proxy.py"),
                "--port",
                "0",
                "--upstream",
                direct,
            ],
            log_dir / f"proxy-{m.key}.log",
            None,
            listening=r"proxy listening on \S+:(\d+)",
            startup_timeout=STARTUP_TIMEOUT_S,
            stop_timeout=STOP_TIMEOUT_S,
        )
        with proxy.running():
            assert proxy.proc is not None
            addresses = {
                "direct": direct,
                "proxy": f"127.0.0.1:{proxy.port}",
                "router": info.router.address,
                "router-grpc": f"127.0.0.1:{grpc_router.port}",
            }
            watched = {
                "direct": {"pod": pids[pod_id]},
                "proxy": {"hop": proxy.proc.pid, "pod": pids[pod_id]},
                "router": {"hop": pids["router"], "pod": pids[pod_id]},
                "router-grpc": {"hop": grpc_router.proc.pid, "pod": pids[pod_id]},
            }
            for target, address in addresses.items():
                check_answer(address, m, sample(4, seed=2), target)
            for c in CONCURRENCIES:
                runs: dict[str, list[dict[str, Any]]] = {t: [] for t in TARGETS}
                for r in range(rounds):
                    # Alternate the order, so that a drift in the machine's speed hits each
                    # target alike.
                    for target in TARGETS if r % 2 == 0 else tuple(reversed(TARGETS)):
                        runs[target].append(
                            closed_loop(
                                addresses[target],
                                payloads[m.key],
                                c,
                                warmup,
                                duration,
                                watch=watched[target],
                                max_errors=100,
                                timeout=REQUEST_TIMEOUT_S,
                                keep_latencies=True,
                            )
                        )
                for target in TARGETS:
                    row = aggregate(
                        {"model": m.key, "target": target, "concurrency": c}, runs[target]
                    )
                    results.hit.append(row)
                    print(
                        f"  {m.key} c={c:<2d} {target:11s} {row['rps']:7,.0f} req/s  p50 "
                        f"{row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:6.2f} ms"
                        + (f"  errors {row['errors']}: {row['first_error']}" * bool(row["errors"])),
                        flush=True,
                    )


def copies_of(info: LocalMesh, model_ids: list[str]) -> dict[str, list[str]]:
    """{model: pods holding a copy (loaded or loading)}, from the router's management API."""
    from mesh.gen import management_pb2 as mpb

    channel, stub = management(info.router.address)
    with channel:
        return {
            m: sorted(
                f"{c.pod_id}:{c.state}"
                for c in stub.GetModelStatus(
                    mpb.GetModelStatusRequest(model_id=m), timeout=30
                ).copies
            )
            for m in model_ids
        }


def probe_copy_size(info: LocalMesh, results: Results) -> int:
    """Load PROBE_COPIES copies of the small MLP through the router; their charged size."""
    channel, stub = management(info.router.address)
    ids = [f"probe-{i}" for i in range(PROBE_COPIES)]
    with channel:
        for model_id in ids:
            register(stub, model_id, "onnx", "mlp")
            ensure_loaded(stub, model_id)
    rows = []
    for address in pod_addresses(info).values():
        for s in runtime_status(address).models:
            if s.model_id in ids:
                rows.append((s.size_bytes, s.measured_bytes, s.estimated_bytes))
    if len(rows) != PROBE_COPIES:
        raise RuntimeError(f"expected {PROBE_COPIES} probe copies loaded, found {len(rows)}")
    size = int(statistics.median(r[0] for r in rows))
    results.probe = {
        "copies": len(rows),
        "size_bytes": [r[0] for r in rows],
        "measured_bytes": [r[1] for r in rows],
        "estimated_bytes": [r[2] for r in rows],
        "median_size_bytes": size,
    }
    return size


# -- 2. Zipf over many models --------------------------------------------------------------------


def zipf_probabilities(n: int, s: float) -> np.ndarray[Any, Any]:
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
    probabilities: np.ndarray[Any, Any] = weights / weights.sum()
    return probabilities


def lru_hits(sequence: list[int], capacity: int, start: int) -> tuple[int, int]:
    """(hits, requests) of one LRU cache of `capacity` models over sequence[start:], warmed by
    sequence[:start]."""
    cache: collections.OrderedDict[int, None] = collections.OrderedDict()
    hits = 0
    for i, m in enumerate(sequence):
        if m in cache:
            cache.move_to_end(m)
            if i >= start:
                hits += 1
        else:
            cache[m] = None
            if len(cache) > capacity:
                cache.popitem(last=False)
    return hits, len(sequence) - start


async def _register_many(address: str, ids: list[str], storage_path: str, size: int) -> None:
    from grpc import aio

    from mesh.gen import management_pb2 as mpb
    from mesh.gen import management_pb2_grpc

    async with aio.insecure_channel(address) as channel:
        stub = management_pb2_grpc.ManagementStub(channel)  # type: ignore[no-untyped-call]
        queue = list(reversed(ids))

        async def worker() -> None:
            while queue:
                model_id = queue.pop()
                await stub.RegisterModel(
                    mpb.RegisterModelRequest(
                        model_id=model_id,
                        format="onnx",
                        storage_path=storage_path,
                        options=mpb.ModelOptions(size_estimate=size),
                    ),
                    timeout=60,
                )

        await asyncio.gather(*(worker() for _ in range(16)))


def pods_now(info: LocalMesh) -> dict[str, dict[str, Any]]:
    pids = child_pids(info)
    pods = {}
    for pod_id, address in pod_addresses(info).items():
        st = runtime_status(address)
        loaded = [m for m in st.models if m.state == 1]  # LOADED
        pods[pod_id] = {
            "capacity_bytes": st.capacity_bytes,
            "used_bytes": st.used_bytes,
            "models_loaded": len(loaded),
            "mean_size_bytes": statistics.mean(m.size_bytes for m in loaded) if loaded else 0,
            "rss_bytes": rss_bytes(pids[pod_id]),
        }
    return pods


@dataclass
class ZipfState:
    info: LocalMesh
    ids: list[str]
    payloads: list[bytes]
    sequence: np.ndarray[Any, Any]
    ports: dict[str, int]
    register_s: float
    rss_start: dict[str, int]
    before_run: dict[str, float]
    warm: dict[str, Any]
    after_warm: dict[str, float]
    pods_after_warm: dict[str, dict[str, Any]]


def zipf_warm(info: LocalMesh, mlp: Model, estimate: int, warmup: float) -> ZipfState:
    """Register the models, check one answer, run the warm-up that fills the caches."""
    pids = child_pids(info)
    rss_start = {pod.name: rss_bytes(pids[pod.name]) for pod in info.pods}
    ids = [f"z{i:04d}" for i in range(ZIPF_MODELS)]
    t0 = time.perf_counter()
    asyncio.run(_register_many(info.router.address, ids, mlp.storage_path, estimate))
    register_s = time.perf_counter() - t0
    print(f"  registered {len(ids)} models in {register_s:.1f} s", flush=True)
    ports = metrics_ports(info)
    if len(ports) != len(info.pods):
        raise RuntimeError(f"found the metrics ports of {len(ports)} of {len(info.pods)} pods")
    x = sample(1)
    payloads = [infer_request(model_id, mlp.input_name, x) for model_id in ids]
    check_answer(info.router.address, Model(**{**asdict(mlp), "model_id": ids[0]}), x, "router")
    rng = np.random.default_rng(ZIPF_SEED)
    # Rank r (0 = hottest) is model z{r}: registration order means nothing to placement.
    sequence = rng.choice(ZIPF_MODELS, size=400_000, p=zipf_probabilities(ZIPF_MODELS, ZIPF_S))
    sequence = sequence.astype(np.int32)
    before_run = pod_counters(ports)  # after the check, which loaded z0000
    warm = in_client_process(
        _zipf_loop, (info.router.address, payloads, sequence, 0, ZIPF_CONCURRENCY, warmup), warmup
    )
    after_warm = pod_counters(ports)
    return ZipfState(
        info,
        ids,
        payloads,
        sequence,
        ports,
        register_s,
        rss_start,
        before_run,
        warm,
        after_warm,
        pods_now(info),
    )


def zipf_measure(
    z: ZipfState, size: int, estimate: int, capacity: int, duration: float, results: Results
) -> None:
    info = z.info
    router_metrics = port_of(info.router.metrics)
    router_before = scrape_labelled(router_metrics, "mesh_router_requests_total")
    measured = in_client_process(
        _zipf_loop,
        (info.router.address, z.payloads, z.sequence, z.warm["end"], ZIPF_CONCURRENCY, duration),
        duration,
    )
    after = pod_counters(z.ports)
    router_after = scrape_labelled(router_metrics, "mesh_router_requests_total")
    if measured["end"] >= len(z.sequence):
        results.notes.append("ANOMALY: the Zipf run used up its whole request sequence")
    pods = pods_now(info)
    hot_copies = copies_of(info, z.ids[:5])
    for pod_id, p in pods.items():
        grown = p["rss_bytes"] - z.rss_start[pod_id]
        p["rss_growth_bytes"] = grown
        p["rss_growth_per_model"] = grown / p["models_loaded"] if p["models_loaded"] else 0

    sequence = z.sequence
    seq = sequence[: measured["end"]].tolist()
    seq[0:0] = [0]  # z0000, loaded by the answer check before the run
    start = z.warm["end"] + 1
    positions = np.asarray(measured["positions"], dtype=np.int64)
    latency = np.asarray(measured["latency_s"], dtype=np.float64)
    status = measured["status"]
    ok = np.asarray([s == "OK" for s in status], dtype=bool)
    errors = collections.Counter(s for s in status if s != "OK")
    models = sequence[positions]
    # A request is a certain miss when no request for its model was ever issued before it:
    # the model had never been loaded anywhere.
    first = np.zeros(len(positions), dtype=bool)
    seen = set(seq[:start])
    for j, m in enumerate(models.tolist()):
        if m not in seen:
            first[j] = True
            seen.add(m)
    hot = models < HOT_MODELS

    requests = len(positions)
    delta = {k: after[k] - z.after_warm[k] for k in POD_COUNTERS}
    loads = delta["mesh_pod_load_seconds_count"]
    fit = sum(p["models_loaded"] for p in pods.values())
    lru_hit, lru_n = lru_hits(seq, fit, start)
    lru_nominal, _ = lru_hits(seq, ZIPF_FIT, start)

    def lat(mask: np.ndarray[Any, Any]) -> dict[str, float]:
        sel = latency[mask & ok]
        return {
            "n": int(sel.size),
            "p50_ms": percentile_ms(sel, 50),
            "p99_ms": percentile_ms(sel, 99),
            "max_ms": float(sel.max()) * 1e3 if sel.size else float("nan"),
        }

    router_errors = sum(
        router_after.get(k, 0.0) - router_before.get(k, 0.0)
        for k in router_after
        if "method=ModelInfer" in k and "status=OK" not in k
    )
    warm = z.warm
    results.zipf = {
        "models": ZIPF_MODELS,
        "pods": len(info.pods),
        "s": ZIPF_S,
        "concurrency": ZIPF_CONCURRENCY,
        "copy_size_bytes": size,
        "size_estimate": estimate,
        "capacity_bytes_per_pod": capacity,
        "register_s": z.register_s,
        "warmup_s": warm["elapsed_s"],
        "warmup_requests": len(warm["positions"]),
        "warmup_loads": z.after_warm["mesh_pod_load_seconds_count"]
        - z.before_run["mesh_pod_load_seconds_count"],
        "warmup_errors": sum(s != "OK" for s in warm["status"]),
        "duration_s": measured["elapsed_s"],
        "requests": requests,
        "rps": requests / measured["elapsed_s"],
        "errors": sum(errors.values()),
        "errors_by_code": dict(errors),
        "error_messages": {**warm["messages"], **measured["messages"]},
        "router_errors": router_errors,
        "loads": loads,
        "failed_loads": delta["mesh_pod_load_failures_total"],
        "evictions": delta["mesh_pod_evictions_total"],
        "hit_ratio": 1 - loads / requests if requests else float("nan"),
        "distinct_models": len(set(models.tolist())),
        "first_requests": int(first.sum()),
        "lru_capacity": fit,
        "lru_hit_ratio": lru_hit / lru_n if lru_n else float("nan"),
        "lru_nominal_hit_ratio": lru_nominal / lru_n if lru_n else float("nan"),
        "all": lat(np.ones(len(positions), dtype=bool)),
        "miss_first": lat(first),
        "hit_hot": lat(hot & ~first),
        "pods_after": pods,
        "hot_copies": hot_copies,
        "hit_ratio_failed_as_miss": 1 - (loads + sum(errors.values())) / requests
        if requests
        else float("nan"),
    }


def bench_zipf(
    storage: Path,
    mlp: Model,
    size: int,
    warmup: float,
    duration: float,
    log: Path,
    results: Results,
) -> None:
    capacity = int(size * ZIPF_FIT / ZIPF_PODS)
    print(f"2. Zipf: mesh of {ZIPF_PODS} pods, capacity {mib(capacity)} each", flush=True)
    with running_mesh(storage, ZIPF_PODS, str(capacity), log) as info:
        z = zipf_warm(info, mlp, size, warmup)
        held = sum(p["models_loaded"] for p in z.pods_after_warm.values())
        used = sum(p["used_bytes"] for p in z.pods_after_warm.values())
        print(f"  after warm-up: {held} copies held, {mib(used / max(held, 1))} each", flush=True)
        zipf_measure(z, size, size, capacity, duration, results)
        r = results.zipf
        r["held_after_warmup"] = held
        r["charged_after_warmup"] = used / held if held else 0.0
        print(
            f"  {r['requests']:,} requests, {r['rps']:,.0f} req/s, {r['loads']:.0f} "
            f"loads, {r['evictions']:.0f} evictions, {r['errors']} errors",
            flush=True,
        )


# -- report --------------------------------------------------------------------------------------


def mib(n: float) -> str:
    return f"{n / 2**20:.2f} MiB"


def report(results: Results) -> str:
    out: list[str] = []
    cfg = results.config
    out.append(
        f"machine: {cfg['cpus']} CPUs ({cfg['cpu']}), Python {cfg['python']}, grpcio "
        f"{cfg['grpcio']}, onnxruntime {cfg['onnxruntime']}, xgboost {cfg['xgboost']}; "
        f"tree: {cfg.get('commit', 'unknown')}"
    )
    out.append(
        f"run: {cfg['rounds']} x {cfg['duration_s']:g} s per cell (rounds in alternating order), "
        f"each after {cfg['warmup_s']:g} s warm-up; mesh 1: "
        f"{cfg['hit_pods']} pods, capacity 1Gi; pods' runtimes {cfg['pod_runtimes'] or 'all'}; "
        "client: closed loop, 1 process, 1 channel, pre-serialized requests, batch 1"
    )
    if results.placement:
        out.append(
            "placement: " + ", ".join(f"{m} on {p}" for m, p in sorted(results.placement.items()))
        )

    cells = {(r["model"], r["target"], r["concurrency"]): r for r in results.hit}
    if cells:
        out.append("\n1. A hit: direct to the pod, through the bare proxy, through the router\n")
        out.append(
            table(
                ["model", "conc", "target", "req/s", "p50 ms", "p99 ms", "errors"],
                [
                    [
                        r["model"],
                        str(r["concurrency"]),
                        r["target"],
                        f"{r['rps']:,.0f}",
                        f"{r['p50_ms']:.2f}",
                        f"{r['p99_ms']:.2f}",
                        str(r["errors"]),
                    ]
                    for r in results.hit
                ],
            )
        )
        rows = []
        ratio_ok = True
        transport_rows = []
        goal_rows = []
        for model in ("mlp", "xgb"):
            for c in CONCURRENCIES:
                d, p, r, g = (cells.get((model, t, c)) for t in TARGETS)
                if not (d and p and r):
                    continue
                if g and g["rps"] and r["rps"]:
                    transport_rows.append(
                        [
                            model,
                            str(c),
                            f"{r['rps'] / g['rps']:.2f}",
                            f"{r['p50_ms'] / g['p50_ms']:.2f}",
                            f"{g['p50_ms'] - d['p50_ms']:.2f}",
                            f"{r['p50_ms'] - d['p50_ms']:.2f}",
                            f"{g['rps'] / p['rps']:.2f}",
                            f"{r['rps'] / p['rps']:.2f}",
                        ]
                    )
                for name, hop in (("router", r), ("router-grpc", g)):
                    if hop is None or not hop["rps"]:
                        continue
                    if c == 1:
                        added = hop["p50_ms"] - d["p50_ms"]
                        goal_rows.append(
                            [
                                f"{model}: {name} p50 at c=1 <= the pod's + {TARGET_HOP_MS} ms",
                                f"+{added:.2f} ms",
                                verdict(added <= TARGET_HOP_MS),
                            ]
                        )
                    if c == 32:
                        share = hop["rps"] / p["rps"]
                        goal_rows.append(
                            [
                                f"{model}: {name} req/s at c=32 >= {TARGET_PROXY_RPS}x the proxy's",
                                f"{share:.2f}x",
                                verdict(share >= TARGET_PROXY_RPS),
                            ]
                        )
                rps_pp, p50_pp = r["rps"] / p["rps"], r["p50_ms"] / p["p50_ms"]
                ok = rps_pp >= 1 - TARGET_PROXY_MARGIN and p50_pp <= 1 + TARGET_PROXY_MARGIN
                ratio_ok &= ok
                hop_p = p["p50_ms"] - d["p50_ms"]
                hop_r = r["p50_ms"] - d["p50_ms"]
                rows.append(
                    [
                        model,
                        str(c),
                        f"{rps_pp:.2f}",
                        f"{p50_pp:.2f}",
                        f"{r['rps'] / d['rps']:.2f}",
                        f"{r['p50_ms'] / d['p50_ms']:.2f}",
                        f"{hop_p:.2f}",
                        f"{hop_r:.2f}",
                        f"{hop_r / hop_p:.2f}" if hop_p > 0.05 else "",
                        verdict(ok),
                    ]
                )
        out.append("\nRatios (router/proxy and router/direct; hop = p50 minus direct p50)\n")
        out.append(
            table(
                [
                    "model",
                    "conc",
                    "router/proxy req/s",
                    "router/proxy p50",
                    "router/direct req/s",
                    "router/direct p50",
                    "proxy hop ms",
                    "router hop ms",
                    "router hop / proxy hop",
                    "within 15% of proxy",
                ],
                rows,
            )
        )
        if transport_rows:
            out.append(
                "\nThe router->pod transport: router (frames to the pod, mesh.frames) against "
                "router-grpc (the same code, --no-pod-frames); hop = p50 minus direct p50\n"
            )
            out.append(
                table(
                    [
                        "model",
                        "conc",
                        "frames/grpc req/s",
                        "frames/grpc p50",
                        "grpc hop ms",
                        "frames hop ms",
                        "grpc/proxy req/s",
                        "frames/proxy req/s",
                    ],
                    transport_rows,
                )
            )
        goal_rows.insert(
            0,
            [
                "router within 15% of the bare proxy (req/s >= 0.85x, p50 <= 1.15x, every cell)",
                "see above",
                verdict(ratio_ok),
            ],
        )
        cpu_rows = []
        for r in results.hit:
            cpu = r["cpu_ms_per_request"]
            hop = cpu.get("hop")
            cpu_rows.append(
                [
                    r["model"],
                    str(r["concurrency"]),
                    r["target"],
                    f"{cpu.get('client', 0):.3f}",
                    f"{hop:.3f}" if hop is not None else "",
                    f"{cpu.get('pod', 0):.3f}",
                    f"{sum(cpu.values()):.3f}",
                    f"{r['machine_ms_per_request'].get('busy', float('nan')):.3f}",
                    f"{r['machine_busy_share'] * 100:.0f}%",
                    f"{r['machine_ms_per_request'].get('steal', float('nan')):.3f}",
                ]
            )
        out.append(
            "\nCPU per request (ms of user+system CPU over the measured window / requests; "
            "hop = the router or the proxy process; machine = every process, from /proc/stat, "
            "and how busy the CPUs were; steal = time the hypervisor gave to others)\n"
        )
        out.append(
            table(
                [
                    "model",
                    "conc",
                    "target",
                    "client",
                    "hop",
                    "pod",
                    "sum",
                    "machine",
                    "busy",
                    "steal",
                ],
                cpu_rows,
            )
        )
        out.append("\nGoals\n")
        out.append(table(["goal", "this run", "verdict"], goal_rows))

    z = results.zipf
    if z:
        pr = results.probe
        out.append(
            f"\n2. Zipf (s = {z['s']}) over {z['models']:,} models on {z['pods']} pods, "
            f"concurrency {z['concurrency']}, through the router\n"
        )
        out.append(
            f"one copy of the ONNX MLP, loaded alone on an idle pod ({pr['copies']} copies): "
            f"size_bytes {', '.join(mib(v) for v in pr['size_bytes'])}; median "
            f"{mib(z['copy_size_bytes'])}"
        )
        out.append(
            f"capacity per pod {mib(z['capacity_bytes_per_pod'])} = {ZIPF_FIT} copies / "
            f"{z['pods']} pods at the median; size_estimate {mib(z['size_estimate'])}; after "
            f"the warm-up the pods held {z['held_after_warmup']} copies, charged "
            f"{mib(z['charged_after_warmup'])} each on average"
        )
        out.append(
            f"registration of {z['models']:,} models: {z['register_s']:.1f} s; warm-up "
            f"{z['warmup_s']:.1f} s, {z['warmup_requests']:,} requests, {z['warmup_loads']:.0f} "
            f"loads, {z['warmup_errors']} errors\n"
        )
        out.append(
            table(
                ["measure", "value"],
                [
                    ["measured", f"{z['duration_s']:.1f} s"],
                    ["requests", f"{z['requests']:,}"],
                    ["req/s", f"{z['rps']:,.0f}"],
                    ["errors (client)", f"{z['errors']}"],
                    ["errors (router's metrics, non-OK ModelInfer)", f"{z['router_errors']:.0f}"],
                    ["distinct models requested", f"{z['distinct_models']:,}"],
                    ["loads (pods' mesh_pod_load_seconds_count)", f"{z['loads']:,.0f}"],
                    ["failed loads", f"{z['failed_loads']:.0f}"],
                    ["evictions (pods' mesh_pod_evictions_total)", f"{z['evictions']:,.0f}"],
                    ["hit ratio = 1 - loads / requests", f"{z['hit_ratio']:.3f}"],
                    [
                        "hit ratio = 1 - (loads + failed requests) / requests",
                        f"{z['hit_ratio_failed_as_miss']:.3f}",
                    ],
                    [
                        f"hit ratio of one global LRU of {z['lru_capacity']} models, same sequence",
                        f"{z['lru_hit_ratio']:.3f}",
                    ],
                    [
                        f"hit ratio of one global LRU of {ZIPF_FIT} models, same sequence",
                        f"{z['lru_nominal_hit_ratio']:.3f}",
                    ],
                ],
            )
        )
        out.append("")
        lat_rows = []
        for label, key in (
            ("all requests", "all"),
            ("miss: first request ever for its model", "miss_first"),
            (f"hit: the {HOT_MODELS} hottest models (not their first request)", "hit_hot"),
        ):
            v = z[key]
            lat_rows.append(
                [
                    label,
                    f"{v['n']:,}",
                    f"{v['p50_ms']:.2f}",
                    f"{v['p99_ms']:.2f}",
                    f"{v['max_ms']:.2f}",
                ]
            )
        out.append(table(["requests", "n", "p50 ms", "p99 ms", "max ms"], lat_rows))
        out.append("")
        out.append(
            table(
                [
                    "pod",
                    "capacity",
                    "used",
                    "models loaded",
                    "mean charged size",
                    "RSS growth since start",
                    "RSS growth / model",
                ],
                [
                    [
                        pod_id,
                        mib(p["capacity_bytes"]),
                        mib(p["used_bytes"]),
                        str(p["models_loaded"]),
                        mib(p["mean_size_bytes"]),
                        mib(p["rss_growth_bytes"]),
                        mib(p["rss_growth_per_model"]),
                    ]
                    for pod_id, p in sorted(z["pods_after"].items())
                ],
            )
        )
        out.append(
            "\ncopies of the 5 hottest models at the end: "
            + "; ".join(f"{m} {', '.join(c) or 'none'}" for m, c in z["hot_copies"].items())
        )
        if z["errors_by_code"]:
            out.append(f"\nerrors by code: {z['errors_by_code']}")
        for message in z["error_messages"].values():
            out.append(f"\nfirst {message}")
    for note in results.notes:
        out.append(f"\nnote: {note}")
    return "\n".join(out)


# -- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the mesh router.")
    parser.add_argument("--quick", action="store_true", help="short cells and a short Zipf run")
    parser.add_argument(
        "--duration", type=float, help="seconds measured per cell and round (default 2.5)"
    )
    parser.add_argument("--rounds", type=int, help="rounds per cell (default 2; --quick 1)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per client (default 0.5)")
    parser.add_argument("--zipf-seconds", type=float, help="measured Zipf run (default 45)")
    parser.add_argument("--zipf-warmup", type=float, help="Zipf warm-up seconds (default 15)")
    parser.add_argument(
        "--hit-pods",
        type=int,
        default=1,
        help="pods of the hit-path mesh (default 1: the router cannot spread a hot model over "
        "a second copy that the direct and proxy targets would not have)",
    )
    parser.add_argument(
        "--pod-runtimes",
        default="onnx,xgboost",
        help='the pods\' runtimes (MESH_POD_RUNTIMES); "" for all installed',
    )
    parser.add_argument("--skip-hit", action="store_true", help="only the Zipf part")
    parser.add_argument("--skip-zipf", action="store_true", help="only the hit-path part")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--log-dir", type=Path, help="keep the meshes' logs here")
    args = parser.parse_args(argv)

    duration = args.duration or (1.5 if args.quick else 2.5)
    rounds = args.rounds or (1 if args.quick else 2)
    warmup = args.warmup if args.warmup is not None else (0.3 if args.quick else 0.5)
    zipf_s = args.zipf_seconds or (15.0 if args.quick else 45.0)
    zipf_warm = args.zipf_warmup if args.zipf_warmup is not None else (5.0 if args.quick else 15.0)

    import grpc
    import onnxruntime
    import xgboost

    child_env_setup(args.pod_runtimes)
    results = Results()
    results.config = {
        "cpus": os.cpu_count(),
        "cpu": cpu_name(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "onnxruntime": onnxruntime.__version__,
        "xgboost": xgboost.__version__,
        "duration_s": duration,
        "rounds": rounds,
        "warmup_s": warmup,
        "zipf_seconds": zipf_s,
        "zipf_warmup_s": zipf_warm,
        "hit_pods": args.hit_pods,
        "pod_runtimes": args.pod_runtimes,
    }
    results.config["commit"] = git_state()
    results.config["loadavg_before"] = os.getloadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mesh-bench-router-") as tmp:
        storage = Path(tmp) / "models"
        models = build_models(storage)
        log_dir = args.log_dir or Path(tmp)
        log_dir.mkdir(parents=True, exist_ok=True)
        logs = [log_dir / "mesh-1.log", log_dir / "mesh-2.log"]
        for log in logs:
            log.unlink(missing_ok=True)

        print(f"1. hit path: mesh of {args.hit_pods} pods", flush=True)
        with running_mesh(storage, args.hit_pods, "1Gi", logs[0]) as info:
            if not args.skip_hit:
                bench_hits(info, models, warmup, duration, rounds, results, log_dir)
                copies = copies_of(info, [m.model_id for m in models])
                if any(len(v) != 1 for v in copies.values()):
                    results.notes.append(
                        f"ANOMALY: after the hit cells the models have copies {copies}: the "
                        "router may have spread over copies that direct and proxy did not use"
                    )
            size = probe_copy_size(info, results)
        print(f"  one MLP copy: {mib(size)}", flush=True)

        if not args.skip_zipf:
            bench_zipf(storage, models[0], size, zipf_warm, zipf_s, logs[1], results)
        for i, log in enumerate(logs, 1):
            problems = log_problems(log)
            if problems:
                results.notes.append(
                    f"mesh {i} logged {len(problems)} ERROR/traceback lines, first: {problems[0]}"
                )
    results.notes.append(
        f"whole run took {time.perf_counter() - started:.0f} s; load average (1, 5, 15 min) "
        f"before it {', '.join(f'{v:.2f}' for v in results.config['loadavg_before'])}, after "
        f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    print("\n" + report(results), flush=True)
    if args.json:
        args.json.write_text(json.dumps(asdict(results), indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
