"""Benchmark the serving pod against the runtimes in process and a null Python gRPC server.

    .venv/bin/python bench/pod.py            # ~5 s per cell, about 3-4 minutes on 2 cores
    .venv/bin/python bench/pod.py --quick    # ~1.5 s per cell
    .venv/bin/python bench/pod.py --duration 10 --json results.json

One run measures, for an ONNX MLP (64-256-256-10, FP32) and an XGBoost booster (100 trees,
depth 6, 64 features), both made on the spot by mesh.examples:

1. in process: onnxruntime (intra_op_num_threads=1) and Booster.inplace_predict (nthread=1),
   single-threaded, batch 1 and 32: p50 latency and calls/s;
2. the pod (`python -m mesh pod`, a subprocess) over gRPC at client concurrency 1, 8 and 32:
   requests/s, p50, p99;
3. a null grpc.aio server (bench/echo_server.py, a subprocess) with the same client: the floor
   of one Python gRPC hop;
4. ratios to that floor and the pod's overhead over the runtime at concurrency 1 (no peer
   figures: MLServer and KServe are compared only when run beside the pod in the same run,
   which bench/peers.py does);
5. load time through the control API (LoadModel) against loading in process;
6. RSS growth of the pod over many load/unload cycles.

The client is closed-loop, runs in its own process (spawned, so it shares no GIL with anything),
and sends pre-serialized requests through a generic grpc.aio stub that neither serializes nor
parses: its protobuf cost is nil, and the server does all the protocol work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# `mesh` is imported from the source tree, whatever the working directory and however the
# virtualenv's editable install was made.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    INFER_PATH,
    Server,
    closed_loop,
    cpu_name,
    free_port,
    percentile_ms,
    rss_bytes,
    table,
    verdict,
)

CONCURRENCIES = (1, 8, 32)
BATCHES = (1, 32)
N_FEATURES = 64
MLP_SIZES = (64, 256, 256, 10)

TARGET_LOAD_RATIO = 2.0  # pod LoadModel <= 2x loading in process (same run)

STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


@dataclass
class Model:
    key: str  # "mlp" or "xgb": the directory name, and the name clients use
    label: str
    file: Path
    input_name: str
    output_name: str
    fmt: str


@dataclass
class Results:
    config: dict[str, Any] = field(default_factory=dict)
    inproc: list[dict[str, Any]] = field(default_factory=list)
    grpc: list[dict[str, Any]] = field(default_factory=list)
    load: list[dict[str, Any]] = field(default_factory=list)
    memory: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# -- helpers -------------------------------------------------------------------------------------


def sample(batch: int, seed: int = 1) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).standard_normal((batch, N_FEATURES)).astype(np.float32)


def infer_request(model: Model, x: np.ndarray[Any, Any]) -> bytes:
    from mesh.gen import grpc_predict_v2_pb2 as pb

    request = pb.ModelInferRequest(
        model_name=model.key,
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name=model.input_name, datatype="FP32", shape=list(x.shape)
            )
        ],
        raw_input_contents=[x.tobytes()],
    )
    return request.SerializeToString()


# -- 1. in process -------------------------------------------------------------------------------


def time_calls(fn: Callable[[], object], duration: float) -> dict[str, float]:
    for _ in range(20):  # warm-up: first-call allocations, caches
        fn()
    latencies: list[float] = []
    clock = time.perf_counter
    start = clock()
    deadline = start + duration
    while True:
        t0 = clock()
        if t0 >= deadline:
            break
        fn()
        latencies.append(clock() - t0)
    elapsed = clock() - start
    return {
        "calls": len(latencies),
        "p50_ms": percentile_ms(latencies, 50),
        "p99_ms": percentile_ms(latencies, 99),
        "calls_per_s": len(latencies) / elapsed,
    }


def ort_session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def xgb_booster(path: Path) -> Any:
    """A Booster read with one thread too: its `nthread` does not reach the reading, which
    otherwise runs on every core's OpenMP thread (bench/loads.py says what that cost)."""
    import xgboost as xgb

    with xgb.config_context(nthread=1):
        return xgb.Booster(params={"nthread": 1}, model_file=str(path))


def in_process_predictor(model: Model) -> Callable[[np.ndarray[Any, Any]], np.ndarray[Any, Any]]:
    if model.fmt == "onnx":
        session = ort_session(model.file)
        return lambda x: session.run([model.output_name], {model.input_name: x})[0]
    booster = xgb_booster(model.file)
    return lambda x: booster.inplace_predict(x, validate_features=False)


def bench_in_process(models: list[Model], duration: float, results: Results) -> None:
    for model in models:
        predict = in_process_predictor(model)
        for batch in BATCHES:
            x = sample(batch)
            timing = time_calls(lambda p=predict, x=x: p(x), duration)  # type: ignore[misc]
            row = {"model": model.key, "batch": batch, **timing}
            results.inproc.append(row)
            print(
                f"  in-process {model.key:3s} b={batch:<2d} p50 {row['p50_ms']:.3f} ms  "
                f"{row['calls_per_s']:,.0f} calls/s",
                flush=True,
            )


# -- 2/3. closed-loop gRPC client (in its own process) -------------------------------------------


def grpc_cells(
    server: str,
    model: str,
    batch: int,
    port: int,
    payload: bytes,
    warmup: float,
    duration: float,
    results: Results,
) -> None:
    for c in CONCURRENCIES:
        row = {"server": server, "model": model, "batch": batch, "concurrency": c}
        row.update(closed_loop(port, payload, c, warmup, duration))
        results.grpc.append(row)
        print(
            f"  {server:4s} {model:4s} b={batch:<2d} c={c:<2d} {row['rps']:8,.0f} req/s  "
            f"p50 {row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:6.2f} ms",
            flush=True,
        )


def check_pod_answers(port: int, model: Model, x: np.ndarray[Any, Any]) -> None:
    """One request through the pod (it loads the model) whose answer must match in process."""
    import grpc

    from mesh.gen import grpc_predict_v2_pb2 as pb

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call: Any = channel.unary_unary(
            INFER_PATH, request_serializer=None, response_deserializer=None
        )
        response = pb.ModelInferResponse.FromString(call(infer_request(model, x), timeout=120))
    got = np.frombuffer(response.raw_output_contents[0], dtype=np.float32)
    want = np.asarray(in_process_predictor(model)(x), dtype=np.float32).reshape(-1)
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-5):
        raise RuntimeError(f"pod answer for {model.key} differs from the runtime's in process")


# -- 5. load time --------------------------------------------------------------------------------


def bench_load(port: int, models: list[Model], reps: int, results: Results) -> None:
    import grpc

    from mesh.gen import runtime_pb2 as rpb
    from mesh.gen import runtime_pb2_grpc

    loaders: dict[str, Callable[[Path], Any]] = {"onnx": ort_session, "xgboost": xgb_booster}
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = runtime_pb2_grpc.RuntimeStub(channel)  # type: ignore[no-untyped-call]
        for model in models:
            load_local = loaders[model.fmt]
            load_local(model.file)  # warm: imports and first-time initialisation
            local: list[float] = []
            for _ in range(reps):
                t0 = time.perf_counter()
                obj = load_local(model.file)
                local.append(time.perf_counter() - t0)
                del obj
            rpc: list[float] = []
            server_side: list[float] = []
            for i in range(-1, reps):  # i = -1: an untimed warm-up load, as in process
                model_id = f"load-{model.key}-{i}-{os.getpid()}"
                request = rpb.LoadModelRequest(
                    model_id=model_id, path=str(model.file), format=model.fmt
                )
                t0 = time.perf_counter()
                response = stub.LoadModel(request, timeout=120)
                seconds = time.perf_counter() - t0
                if response.already_loaded:
                    raise RuntimeError(f"{model_id} was already loaded: not a fresh load")
                if i >= 0:
                    rpc.append(seconds)
                    server_side.append(response.load_seconds)
                stub.UnloadModel(rpb.UnloadModelRequest(model_id=model_id), timeout=60)
            inproc_ms = statistics.median(local) * 1e3
            rpc_ms = statistics.median(rpc) * 1e3
            server_ms = statistics.median(server_side) * 1e3
            row: dict[str, Any] = {
                "model": model.key,
                "reps": reps,
                "inproc_ms": inproc_ms,
                "pod_rpc_ms": rpc_ms,
                "pod_load_seconds_ms": server_ms,
                "ratio_rpc": rpc_ms / inproc_ms,
                "ratio_server": server_ms / inproc_ms,
            }
            results.load.append(row)
            print(
                f"  load {model.key:3s} in process {row['inproc_ms']:7.2f} ms  pod LoadModel "
                f"{row['pod_rpc_ms']:7.2f} ms (load_seconds {row['pod_load_seconds_ms']:.2f} ms)"
                f"  ratio {row['ratio_rpc']:.2f}x",
                flush=True,
            )


# -- 6. memory -----------------------------------------------------------------------------------


def bench_memory(pod: Server, model: Model, cycles: int, warmup: int, results: Results) -> None:
    import grpc

    from mesh.gen import runtime_pb2 as rpb
    from mesh.gen import runtime_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{pod.port}") as channel:
        stub = runtime_pb2_grpc.RuntimeStub(channel)  # type: ignore[no-untyped-call]

        def cycle(model_id: str) -> None:
            stub.LoadModel(
                rpb.LoadModelRequest(model_id=model_id, path=str(model.file), format=model.fmt),
                timeout=120,
            )
            stub.UnloadModel(rpb.UnloadModelRequest(model_id=model_id), timeout=60)

        for mode in ("distinct", "same"):
            for i in range(warmup):
                cycle(f"mem-{mode}-warm-{i}" if mode == "distinct" else f"mem-{mode}")
            before = rss_bytes(pod.pid) / 2**20
            t0 = time.perf_counter()
            for i in range(cycles):
                cycle(f"mem-{mode}-{i}" if mode == "distinct" else f"mem-{mode}")
            seconds = time.perf_counter() - t0
            after = rss_bytes(pod.pid) / 2**20
            row = {
                "model": model.key,
                "ids": mode,
                "cycles": cycles,
                "rss_before_mb": before,
                "rss_after_mb": after,
                "growth_mb": after - before,
                "ms_per_cycle": seconds / cycles * 1e3,
            }
            results.memory.append(row)
            print(
                f"  memory {cycles} load/unload cycles ({mode} ids): RSS {before:.1f} -> "
                f"{after:.1f} MB ({after - before:+.1f} MB), {row['ms_per_cycle']:.1f} ms/cycle",
                flush=True,
            )


# -- the pod -------------------------------------------------------------------------------------

POD_READY = r"pod listening on \S+:(\d+)"


def pod_argv(
    models_dir: Path, args: argparse.Namespace, extra: list[str] | None = None
) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "mesh",
        "pod",
        "--models",
        str(models_dir),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--capacity",
        "2Gi",
    ]
    argv += ["--no-metrics"] if args.no_metrics else ["--metrics-port", str(free_port())]
    if args.workers:
        argv += ["--workers", str(args.workers)]
    return argv + shlex.split(args.pod_args or "") + (extra or [])


def control_sections(
    pod: Server,
    models: list[Model],
    load_reps: int,
    mem_cycles: int,
    mem_warmup: int,
    results: Results,
) -> None:
    by_key = {m.key: m for m in models}
    print("5. load time", flush=True)
    bench_load(pod.port, models, load_reps, results)
    print("6. memory", flush=True)
    bench_memory(pod, by_key["mlp"], mem_cycles, mem_warmup, results)


def note_pod_errors(pod: Server, results: Results) -> None:
    errors = pod.errors()
    if errors:
        results.notes.append(f"{pod.name} logged {len(errors)} errors, first: {errors[0]}")


# -- report --------------------------------------------------------------------------------------


def report(results: Results) -> str:
    out: list[str] = []
    cfg = results.config
    out.append(
        f"machine: {cfg['cpus']} CPUs ({cfg['cpu']}), Python {cfg['python']}, grpcio "
        f"{cfg['grpcio']}, onnxruntime {cfg['onnxruntime']}, xgboost {cfg['xgboost']}"
    )
    out.append(
        f"run: {cfg['duration_s']:g} s per cell after {cfg['warmup_s']:g} s warm-up; pod "
        f"workers {cfg['pod_workers']}, metrics {'on' if cfg['pod_metrics'] else 'off'}"
        f"{', extra flags: ' + cfg['pod_args'] if cfg['pod_args'] else ''}; "
        f"client: closed loop, 1 process, 1 channel, pre-serialized requests"
    )

    inproc = {(r["model"], r["batch"]): r for r in results.inproc}
    out.append("\n1. Runtime in process (single thread)\n")
    out.append(
        table(
            ["model", "batch", "p50 ms", "p99 ms", "calls/s"],
            [
                [
                    r["model"],
                    str(r["batch"]),
                    f"{r['p50_ms']:.3f}",
                    f"{r['p99_ms']:.3f}",
                    f"{r['calls_per_s']:,.0f}",
                ]
                for r in results.inproc
            ],
        )
    )

    echo = {(r["batch"], r["concurrency"]): r for r in results.grpc if r["server"] == "echo"}
    rows = []
    for r in results.grpc:
        e = echo.get((r["batch"], r["concurrency"]))
        is_pod = r["server"] == "pod"
        base = inproc.get((r["model"], r["batch"]))
        overhead = (
            f"{r['p50_ms'] - base['p50_ms']:.2f}"
            if is_pod and base is not None and r["concurrency"] == 1
            else ""
        )
        rows.append(
            [
                r["server"],
                r["model"],
                str(r["batch"]),
                str(r["concurrency"]),
                f"{r['rps']:,.0f}",
                f"{r['p50_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                f"{r['rps'] / e['rps']:.2f}" if is_pod and e else "",
                f"{r['p50_ms'] / e['p50_ms']:.2f}" if is_pod and e else "",
                overhead,
            ]
        )
    out.append("\n2-3. Over gRPC: the pod and the null Python server (echo)\n")
    out.append(
        table(
            [
                "server",
                "model",
                "batch",
                "conc",
                "req/s",
                "p50 ms",
                "p99 ms",
                "rps/echo",
                "p50/echo",
                "p50 - in-proc ms",
            ],
            rows,
        )
    )

    if results.load:
        out.append("\n5. Load time (median; pod = LoadModel round trip, fresh model ids)\n")
        out.append(
            table(
                [
                    "model",
                    "reps",
                    "in process ms",
                    "pod LoadModel ms",
                    "pod load_seconds ms",
                    "ratio (RPC)",
                    "ratio (server)",
                    "target <= 2x",
                ],
                [
                    [
                        r["model"],
                        str(r["reps"]),
                        f"{r['inproc_ms']:.2f}",
                        f"{r['pod_rpc_ms']:.2f}",
                        f"{r['pod_load_seconds_ms']:.2f}",
                        f"{r['ratio_rpc']:.2f}x",
                        f"{r['ratio_server']:.2f}x",
                        verdict(r["ratio_rpc"] <= TARGET_LOAD_RATIO),
                    ]
                    for r in results.load
                ],
            )
        )

    if results.memory:
        out.append("\n6. Pod RSS over load/unload cycles (after a warm-up of 10 cycles)\n")
        out.append(
            table(
                [
                    "model",
                    "ids",
                    "cycles",
                    "RSS before MB",
                    "RSS after MB",
                    "growth MB",
                    "ms/cycle",
                ],
                [
                    [
                        r["model"],
                        r["ids"],
                        str(r["cycles"]),
                        f"{r['rss_before_mb']:.1f}",
                        f"{r['rss_after_mb']:.1f}",
                        f"{r['growth_mb']:+.1f}",
                        f"{r['ms_per_cycle']:.1f}",
                    ]
                    for r in results.memory
                ],
            )
        )
    for note in results.notes:
        out.append(f"\nnote: {note}")
    return "\n".join(out)


# -- main ----------------------------------------------------------------------------------------


def build_models(directory: Path) -> list[Model]:
    from mesh import examples

    mlp = examples.onnx_mlp(directory / "mlp", sizes=MLP_SIZES)
    xgb = examples.xgboost_booster(directory / "xgb", n_features=N_FEATURES, n_trees=100, depth=6)
    return [
        Model("mlp", "ONNX MLP 64-256-256-10", mlp, "input", "output", "onnx"),
        Model("xgb", "XGBoost 100 trees depth 6", xgb, "input__0", "output__0", "xgboost"),
    ]


def build_load_models(directory: Path) -> list[Model]:
    from mesh import examples

    mlp = examples.onnx_mlp(directory / "mlp-large", sizes=(64, 2048, 2048, 10))
    xgb = examples.xgboost_booster(directory / "xgb-large", n_features=N_FEATURES, n_trees=1000)
    return [
        Model("mlp-large", "ONNX MLP 64-2048-2048-10", mlp, "input", "output", "onnx"),
        Model("xgb-large", "XGBoost 1000 trees depth 6", xgb, "input__0", "output__0", "xgboost"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the mesh serving pod.")
    parser.add_argument("--quick", action="store_true", help="short cells (1.5 s), fewer reps")
    parser.add_argument("--duration", type=float, help="seconds measured per cell (default 5)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per gRPC cell")
    parser.add_argument("--workers", type=int, help="pod --workers (default: the pod's own)")
    parser.add_argument("--no-metrics", action="store_true", help="run the pod with --no-metrics")
    parser.add_argument(
        "--pod-args", help='more `mesh pod` flags, one string, e.g. --pod-args="--device cpu"'
    )
    parser.add_argument("--load-reps", type=int, help="LoadModel repetitions per model")
    parser.add_argument("--mem-cycles", type=int, help="load/unload cycles for the RSS check")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)

    duration = args.duration or (1.5 if args.quick else 5.0)
    warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)
    load_reps = args.load_reps or (3 if args.quick else 7)
    mem_cycles = args.mem_cycles or (50 if args.quick else 200)
    mem_warmup = 10

    import grpc
    import onnxruntime
    import xgboost

    from mesh.pod.settings import PodSettings

    results = Results()
    results.config = {
        "cpus": os.cpu_count(),
        "cpu": cpu_name(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "onnxruntime": onnxruntime.__version__,
        "xgboost": xgboost.__version__,
        "duration_s": duration,
        "warmup_s": warmup,
        "pod_workers": args.workers or PodSettings.model_fields["workers"].default,
        "pod_metrics": not args.no_metrics,
        "pod_args": args.pod_args or "",
        "load_reps": load_reps,
        "mem_cycles": mem_cycles,
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mesh-bench-") as tmp:
        models = build_models(Path(tmp) / "models")
        # Larger models for the load-time comparison only, where a ~1 ms load would measure
        # little but the fixed cost of one gRPC round trip.
        load_models = build_load_models(Path(tmp) / "models")
        payloads = {(m.key, b): infer_request(m, sample(b)) for m in models for b in BATCHES}

        print("1. runtimes in process", flush=True)
        bench_in_process(models, duration, results)

        print("3. null gRPC server (echo)", flush=True)
        logs = Path(tmp) / "logs"
        echo = Server(
            "echo server",
            [sys.executable, str(ROOT / "bench" / "echo_server.py"), "--port", "0"],
            logs / "echo.log",
            None,
            listening=r"echo listening on \S+:(\d+)",
            startup_timeout=STARTUP_TIMEOUT_S,
            stop_timeout=STOP_TIMEOUT_S,
        )
        with echo.running():
            for batch in BATCHES:
                # The echo ignores the request; the xgb request has the same size as the mlp's.
                grpc_cells(
                    "echo",
                    "-",
                    batch,
                    echo.port,
                    payloads["xgb", batch],
                    warmup,
                    duration,
                    results,
                )

        print("2. pod over gRPC", flush=True)
        rss_end = float("nan")
        models_dir = Path(tmp) / "models"
        pod = Server(
            "mesh pod",
            pod_argv(models_dir, args),
            logs / "pod.log",
            None,
            listening=POD_READY,
            startup_timeout=STARTUP_TIMEOUT_S,
            stop_timeout=STOP_TIMEOUT_S,
        )
        try:
            with pod.running():
                for m in models:
                    check_pod_answers(pod.port, m, sample(4))  # loads it: the first request
                for m in models:
                    for batch in BATCHES:
                        grpc_cells(
                            "pod",
                            m.key,
                            batch,
                            pod.port,
                            payloads[m.key, batch],
                            warmup,
                            duration,
                            results,
                        )
                control_sections(
                    pod, models + load_models, load_reps, mem_cycles, mem_warmup, results
                )
                rss_end = rss_bytes(pod.pid) / 2**20
                note_pod_errors(pod, results)
        finally:
            pod.stop()
        if pod.killed:
            results.notes.append(
                f"ANOMALY: {pod.name} did not exit within {STOP_TIMEOUT_S:g}s of SIGTERM "
                "and was killed."
            )
    results.notes.append(f"pod RSS at the end of the run: {rss_end:.1f} MB")
    results.notes.append(f"whole run took {time.perf_counter() - started:.0f} s")

    print("\n" + report(results), flush=True)
    if args.json:
        args.json.write_text(json.dumps(asdict(results), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
