"""The mesh beside its peers in one run: KServe, MLServer, the pod, the router, `mesh serve`.

    .venv/bin/python bench/peers.py                  # 2 repeats x 5 s per cell (~6 min on 2 cores)
    .venv/bin/python bench/peers.py --quick          # 1 repeat x 2 s per cell
    .venv/bin/python bench/peers.py --json out.json --cache ~/.cache/mesh-bench

The first run installs the peers into virtual environments of their own under --cache
(default ~/.cache/mesh-bench/peers): MLServer 1.7.1 with its XGBoost runtime (and `uvloop<0.22`:
its parallel workers crash-loop on 0.23) and KServe 0.21.0. Later runs reuse them.

Every target serves the same XGBoost booster (100 trees, depth 6, 64 features, made on the spot)
to the same client: a closed loop in a process of its own that sends one pre-serialized v2
`ModelInferRequest` (batch 1, FP32, raw contents) over gRPC. KServe serves it through a
`kserve.Model` whose `predict` calls `Booster.inplace_predict`, as the mesh's runtime does;
MLServer through its own `mlserver_xgboost` runtime, as shipped and with `parallel_workers=0`
(inference in the server's process), each with OMP_NUM_THREADS=1 (one XGBoost thread, as the
mesh and the KServe model use). The targets run
one at a time (so that no idle server takes CPU from the one measured) and are interleaved per
repeat: repeat 1 runs every target, then repeat 2, so a drift in the machine touches them all.
Each target's first answer is checked against `inplace_predict` in this process.

The report gives, per target and concurrency, req/s, p50 and p99 (median over repeats), every
ratio against KServe and MLServer from this run, and the issue's targets as MET or MISSED.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import venv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    INFER_PATH,
    Server,
    child_env,
    closed_loop,
    free_port,
    grpc_ready,
    process_tree,
    table,
)

N_FEATURES = 64
INPUT = "input__0"
# The models every target serves: one ("xgb") unless --models asks for more; set by main.
NAMES: list[str] = ["xgb"]


@dataclass(frozen=True)
class PeerEnv:
    """A peer's virtual environment: pip steps run in order; a marker records them."""

    name: str
    steps: tuple[tuple[str, ...], ...]

    def python(self, cache: Path) -> Path:
        return cache / self.name / "bin" / "python"

    def ensure(self, cache: Path) -> Path:
        home = cache / self.name
        marker = home / ".mesh-bench-installed"
        wanted = json.dumps(self.steps)
        if marker.exists() and marker.read_text() == wanted:
            return self.python(cache)
        print(f"installing {self.name} into {home} (once; later runs reuse it)", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(home)
        pip = [str(self.python(cache)), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        for step in self.steps:
            subprocess.run([*pip, *step], check=True)
        marker.write_text(wanted)
        return self.python(cache)


# mlserver-xgboost asks for `xgboost`, whose wheel carries 480 MB of NCCL; xgboost-cpu provides
# the same module, so the runtime goes in without its dependencies after the CPU build and the
# one other thing it imports (xgboost's scikit-learn wrapper).
MLSERVER = PeerEnv(
    "mlserver-1.7.1",
    (
        ("mlserver==1.7.1", "uvloop<0.22", "xgboost-cpu>=2.1,<4", "scikit-learn>=1.3,<2"),
        ("--no-deps", "mlserver-xgboost==1.7.1"),
    ),
)
KSERVE = PeerEnv("kserve-0.21.0", (("kserve==0.21.0", "xgboost-cpu>=2.1,<4"),))


@dataclass
class Target:
    """How to start one server and what port its v2 gRPC service listens on."""

    name: str
    start: Callable[[Path, Path], tuple[Server, int]]  # (workdir, log dir) -> server, port
    rows: list[dict[str, Any]] = field(default_factory=list)


def mesh_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "mesh", *args]


def start_pod(work: Path, logs: Path) -> tuple[Server, int]:
    port = free_port()
    argv = mesh_argv(
        "pod", "--models", str(work / "mesh"), "--host", "127.0.0.1", "--port", str(port),
        "--metrics-port", str(free_port()), "--capacity", "1Gi",
    )  # fmt: skip
    return Server("pod", argv, logs / "pod.log", grpc_ready(port)), port


def start_serve(work: Path, logs: Path) -> tuple[Server, int]:
    port = free_port()
    argv = mesh_argv(
        "serve", "--models", str(work / "mesh"), "--host", "127.0.0.1", "--port", str(port),
        "--rest-port", str(free_port()), "--metrics-port", str(free_port()), "--capacity", "1Gi",
    )  # fmt: skip
    return Server("mesh serve", argv, logs / "serve.log", grpc_ready(port)), port


def start_serve_from(tree: Path) -> Callable[[Path, Path], tuple[Server, int]]:
    """`mesh serve` from another source tree (--baseline): a before/after in one run."""

    def start(work: Path, logs: Path) -> tuple[Server, int]:
        server, port = start_serve(work, logs)
        server.env = {**child_env(), "PYTHONPATH": str(tree)}
        server.log = logs / "serve-baseline.log"
        return server, port

    return start


def start_router(work: Path, logs: Path) -> tuple[Server, int]:
    port = free_port()
    argv = mesh_argv(
        "up", "--storage", str(work / "mesh"), "--pods", "1", "--capacity", "1Gi",
        "--port", str(port), "--rest-port", str(free_port()),
    )  # fmt: skip
    server = Server("router", argv, logs / "router.log", grpc_ready(port))

    def ready() -> bool:
        # Ready once the router answers and every model is registered through it.
        if not grpc_ready(port)():
            return False
        register_all(port)
        return True

    server.ready = ready
    return server, port


def register_all(port: int) -> None:
    """Register every model with the router's management API (no load: the warm-up loads)."""
    import grpc

    from mesh.gen import management_pb2 as mpb
    from mesh.gen import management_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = management_pb2_grpc.ManagementStub(channel)  # type: ignore[no-untyped-call]
        for name in NAMES:
            request = mpb.RegisterModelRequest(model_id=name, format="xgboost", storage_path=name)
            try:
                stub.RegisterModel(request, timeout=30)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                    raise


def start_kserve(cache: Path) -> Callable[[Path, Path], tuple[Server, int]]:
    def start(work: Path, logs: Path) -> tuple[Server, int]:
        port, http = free_port(), free_port()
        script = Path(__file__).resolve().parent / "peers" / "kserve_xgboost.py"
        models = [f"{name}={work / 'peer' / name}.json" for name in NAMES]
        argv = [str(KSERVE.python(cache)), str(script), str(http), str(port), *models]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        ready = grpc_ready(port, *NAMES)
        return Server("KServe", argv, logs / "kserve.log", ready, env=env), port

    return start


def start_mlserver(cache: Path, workers: int | None) -> Callable[[Path, Path], tuple[Server, int]]:
    """MLServer as shipped (`workers=None`: its default pool of inference processes), or with
    `parallel_workers` set (0 runs inference in the server's own process, with no IPC hop)."""

    def start(work: Path, logs: Path) -> tuple[Server, int]:
        port = free_port()
        home = work / f"mlserver-{workers}"
        if not home.exists():
            shutil.copytree(work / "mlserver", home)
        settings: dict[str, Any] = {
            "http_port": free_port(),
            "grpc_port": port,
            "metrics_port": free_port(),
        }
        if workers is not None:
            settings["parallel_workers"] = workers
        (home / "settings.json").write_text(json.dumps(settings))
        mlserver = MLSERVER.python(cache).parent / "mlserver"
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        # One XGBoost thread per prediction, as the mesh and the KServe model run it: its
        # scikit-learn wrapper otherwise spins a thread per core for a batch of one row.
        env["OMP_NUM_THREADS"] = "1"
        argv = [str(mlserver), "start", str(home)]
        log = logs / f"mlserver-{workers}.log"
        return Server("MLServer", argv, log, grpc_ready(port, *NAMES), env=env, cwd=home), port

    return start


def build_models(work: Path) -> np.ndarray[Any, Any]:
    """The booster, under every name, in the mesh's layout and the peers' (JSON); its answer
    for the sample."""
    import xgboost as xgb

    from mesh import examples

    first = examples.xgboost_booster(work / "mesh" / NAMES[0], n_features=N_FEATURES)
    booster = xgb.Booster(model_file=str(first))
    (work / "peer").mkdir()
    for name in NAMES:
        folder = work / "mesh" / name
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / first.name).exists():
            shutil.copyfile(first, folder / first.name)
        booster.save_model(str(work / "peer" / f"{name}.json"))
        mlserver = work / "mlserver" / name
        mlserver.mkdir(parents=True)
        booster.save_model(str(mlserver / "model.json"))
        settings = {
            "name": name,
            "implementation": "mlserver_xgboost.XGBoostModel",
            "parameters": {"uri": "./model.json"},
        }
        (mlserver / "model-settings.json").write_text(json.dumps(settings))
    return np.asarray(booster.inplace_predict(sample(), validate_features=False), np.float32)


def sample() -> np.ndarray[Any, Any]:
    return np.random.default_rng(1).standard_normal((1, N_FEATURES)).astype(np.float32)


def payload(model: str = "xgb") -> bytes:
    from mesh.gen import grpc_predict_v2_pb2 as pb

    x = sample()
    request = pb.ModelInferRequest(
        model_name=model,
        inputs=[pb.ModelInferRequest.InferInputTensor(name=INPUT, datatype="FP32", shape=[1, 64])],
        raw_input_contents=[x.tobytes()],
    )
    return request.SerializeToString()


def check_answer(name: str, port: int, body: bytes, want: np.ndarray[Any, Any]) -> None:
    import grpc

    from mesh.gen import grpc_predict_v2_pb2 as pb

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call: Any = channel.unary_unary(
            INFER_PATH, request_serializer=None, response_deserializer=None
        )
        response = pb.ModelInferResponse.FromString(call(body, timeout=120))
    if response.raw_output_contents:
        got = np.frombuffer(response.raw_output_contents[0], dtype=np.float32)
    else:
        got = np.asarray(response.outputs[0].contents.fp32_contents, np.float32)
    if got.reshape(-1).shape != want.reshape(-1).shape or not np.allclose(
        got.reshape(-1), want.reshape(-1), rtol=1e-4, atol=1e-5
    ):
        raise RuntimeError(f"{name} answered {got!r}, in process {want!r}")


def median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows) if rows else float("nan")


def report(targets: list[Target], concurrencies: list[int], meta: dict[str, Any]) -> str:
    by = {t.name: t for t in targets}

    def cell(name: str, c: int, key: str) -> float:
        return median([r for r in by[name].rows if r["concurrency"] == c], key)

    out = [f"# Peers, side by side ({meta['when']})\n", "```", *meta["lines"], "```\n"]
    headers = [
        "target",
        *[f"c={c} {k}" for c in concurrencies for k in ("req/s", "p50 ms", "p99 ms")],
    ]
    rows = [
        [t.name, *[f"{cell(t.name, c, k):,.{0 if k == 'rps' else 2}f}" for c in concurrencies
                   for k in ("rps", "p50_ms", "p99_ms")]]
        for t in targets
    ]  # fmt: skip
    out += [table(headers, rows), ""]
    cpu_headers = [
        "target",
        *[
            f"c={c} {k}"
            for c in concurrencies
            for k in ("server CPU ms/req", "client CPU ms/req", "cores busy")
        ],
    ]
    cpu_rows = [[t.name, *[f"{cell(t.name, c, k):.{2 if k == 'busy_cores' else 3}f}"
                           for c in concurrencies
                           for k in ("cpu_ms", "client_cpu_ms", "busy_cores")]]
                for t in targets if all("cpu_ms" in r for r in t.rows)]  # fmt: skip
    if cpu_rows:
        out += ["CPU seconds per request of the target's processes (all of them) and of the "
                "client, and the machine's cores busy during the cell (all processes), median "
                "over repeats. Where the cores are all busy, req/s is bounded by the cores over "
                "server and client CPU per request, whatever the server does:\n",
                table(cpu_headers, cpu_rows), ""]  # fmt: skip

    peers = [p for p in ("KServe", "MLServer", "MLServer w0") if p in by]
    mesh_names = [t.name for t in targets if t.name not in peers]
    ratio_rows = []
    for name in mesh_names:
        for c in concurrencies:
            row = [name, str(c)]
            for peer in peers:
                row.append(f"{cell(name, c, 'rps') / cell(peer, c, 'rps'):.2f}x")
                row.append(f"{cell(name, c, 'p50_ms') / cell(peer, c, 'p50_ms'):.2f}x")
            ratio_rows.append(row)
    ratio_headers = ["mesh target", "c"]
    for peer in peers:
        ratio_headers += [f"req/s / {peer}", f"p50 / {peer}"]
    if peers:
        out += ["Ratios, this run (req/s: higher is better; p50: lower is better):\n",
                table(ratio_headers, ratio_rows), ""]  # fmt: skip

    lo, hi = min(concurrencies), max(concurrencies)
    # (what, measured, bound, higher_is_better): the targets, each bound from this run.
    checks: list[tuple[str, float, float, bool]] = []
    if "KServe" in by and "pod" in by:
        pod_p50, pod_rps = cell("pod", lo, "p50_ms"), cell("pod", hi, "rps")
        checks.append(
            (f"pod p50 at c={lo} <= KServe's", pod_p50, cell("KServe", lo, "p50_ms"), False)
        )
        checks.append(
            (f"pod req/s at c={hi} >= 2x KServe's", pod_rps, 2 * cell("KServe", hi, "rps"), True)
        )
    if "pod" in by and "mesh serve" in by:
        serve_rps, serve_p50 = cell("mesh serve", hi, "rps"), cell("mesh serve", lo, "p50_ms")
        checks.append(
            (
                f"mesh serve req/s at c={hi} >= 0.95x the pod's",
                serve_rps,
                0.95 * cell("pod", hi, "rps"),
                True,
            )
        )
        checks.append(
            (
                f"mesh serve p50 at c={lo} <= 1.1x the pod's",
                serve_p50,
                1.1 * cell("pod", lo, "p50_ms"),
                False,
            )
        )
    if len(NAMES) > 1 and "MLServer" in by and "router" in by:
        router_rps = cell("router", hi, "rps")
        checks.append((f"{len(NAMES)} models, router req/s at c={hi} >= 2x MLServer's",
                       router_rps, 2 * cell("MLServer", hi, "rps"), True))  # fmt: skip
    if "pod" in by and "router" in by:
        router_p50 = cell("router", lo, "p50_ms")
        checks.append(
            (
                f"router p50 at c={lo} <= the pod's + 0.5 ms",
                router_p50,
                cell("pod", lo, "p50_ms") + 0.5,
                False,
            )
        )
    if checks:
        verdicts = [
            [what, f"{got:,.2f}", f"{bound:,.2f}",
             "MET" if (got >= bound if higher else got <= bound) else "MISSED"]
            for what, got, bound, higher in checks
        ]  # fmt: skip
        out += ["Targets (issue 13), against figures of this run:\n",
                table(["target", "measured", "bound", "verdict"], verdicts), ""]  # fmt: skip
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per cell")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--concurrency", default="1,32", help="comma-separated")
    parser.add_argument("--quick", action="store_true", help="1 repeat x 2 s per cell")
    parser.add_argument("--only", default="", help="comma-separated target names to run")
    parser.add_argument("--cache", type=Path,
                        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                        / "mesh-bench" / "peers")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument(
        "--baseline", type=Path,
        help="also run `mesh serve` from this source tree (another worktree or checkout), "
        "interleaved with the rest, as \"mesh serve (baseline)\"",
    )  # fmt: skip
    parser.add_argument(
        "--models", type=int, default=1,
        help="serve this many copies of the booster under their own names and spread the "
        "requests over them by Zipf(1.0) (200 with --concurrency 8 for the many-models cell)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.repeats, args.warmup = 2.0, 1, 0.5
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    if args.models > 1:
        NAMES[:] = [f"xgb{i:03d}" for i in range(args.models)]

    targets = [
        Target("KServe", start_kserve(args.cache)),
        Target("MLServer", start_mlserver(args.cache, None)),
        Target("MLServer w0", start_mlserver(args.cache, 0)),
        Target("pod", start_pod),
        Target("router", start_router),
        Target("mesh serve", start_serve),
    ]
    if args.only:
        keep = {n.strip() for n in args.only.split(",")}
        targets = [t for t in targets if t.name in keep]
    if args.baseline is not None:
        targets.append(Target("mesh serve (baseline)", start_serve_from(args.baseline.resolve())))
    args.cache.mkdir(parents=True, exist_ok=True)
    names = {t.name for t in targets}
    for peer_names, peer in (({"KServe"}, KSERVE), ({"MLServer", "MLServer w0"}, MLSERVER)):
        if names & peer_names:
            peer.ensure(args.cache)

    bodies = [payload(name) for name in NAMES]
    body = bodies[0]
    # Zipf(1.0) over the models, popularity independent of name, the same order for everyone.
    rng = np.random.default_rng(7)
    weights = 1.0 / np.arange(1, len(NAMES) + 1)
    ranks = rng.choice(len(NAMES), 100_000, p=weights / weights.sum())
    sequence = rng.permutation(len(NAMES))[ranks].tolist()
    with tempfile.TemporaryDirectory(prefix="mesh-peers-") as tmp:
        work = Path(tmp)
        logs = work / "logs"
        want = build_models(work)
        for repeat in range(args.repeats):
            for target in targets:
                server, port = target.start(work, logs)
                with server.running():
                    check_answer(target.name, port, body, want)
                    for other in bodies[1:]:  # every model loaded before anything is timed
                        check_answer(target.name, port, other, want)
                    # Every process of the target (mesh up's pods and etcd, MLServer's
                    # workers): their CPU per request moves less with the machine's load
                    # than req/s does.
                    tree = {str(pid): pid for pid in process_tree(server.pid)}
                    for c in concurrencies:
                        row = closed_loop(
                            port, bodies, c, args.warmup, args.duration, sequence, watch=tree
                        )
                        server_cpu = sum(v for k, v in row["cpu_s"].items() if k != "client")
                        row["cpu_ms"] = 1e3 * server_cpu / max(row["requests"], 1)
                        client_cpu = row["cpu_s"].get("client", float("nan"))
                        row["client_cpu_ms"] = 1e3 * client_cpu / max(row["requests"], 1)
                        row["busy_cores"] = row["machine_s"]["busy"] / row["elapsed_s"]
                        row.update(target=target.name, concurrency=c, repeat=repeat)
                        target.rows.append(row)
                        print(f"  r{repeat} {target.name:10s} c={c:<3d} {row['rps']:8,.0f} req/s"
                              f"  p50 {row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:6.2f} ms"
                              f"  CPU {row['cpu_ms']:5.3f} ms/req", flush=True)  # fmt: skip

    import time

    meta = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "lines": [
            f"machine: {platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}",
            f"cells: {args.repeats} repeats x {args.duration:g} s (warm-up {args.warmup:g} s), "
            f"concurrency {args.concurrency}; XGBoost 100 trees depth 6, 64 features, batch 1; "
            + ("one model" if len(NAMES) == 1 else f"{len(NAMES)} models, Zipf(1.0)"),
            "command: python bench/peers.py "
            + " ".join(argv if argv is not None else sys.argv[1:]),
        ],
    }
    text = report(targets, concurrencies, meta)
    print("\n" + text)
    if args.json:
        rows = [r for t in targets for r in t.rows]
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
