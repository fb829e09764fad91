"""Promotion from the host tier against a reload through the puller, for the same model.

    .venv/bin/python bench/tiers.py                  # about a minute on 2 cores
    .venv/bin/python bench/tiers.py --reps 7 --json tiers.json

One run starts a puller (`python -m mesh puller`, its own process, unix socket, `file` storage
over a local directory) and, per model, a pod (`python -m mesh pod --host-tier ...`, its own
process) whose device tier holds one copy of the model. For each model it measures, over
--reps repetitions, the wall time of the router's call, `LoadModel`, in three cases:

1. promotion: another model's load evicted this one into the host tier; LoadModel brings it back
   from host memory (a deserialisation from the bytes kept there: no pull, no file);
2. reload through the puller, artifact on its disk: the model was unloaded (an unload drops the
   host copy); LoadModel pulls (a cache hit on the puller's disk) and loads the file;
3. reload through the puller, cold: the same, from another storage path, so the puller copies
   the artifact from storage into its cache first.

The ratios (reload / promotion) are measured in the same run on the same model. This is a CPU
pod: the "device" is host memory too, so a promotion saves the pull and the file read, not a
host-to-device copy (bench/gpu.py measures that where a GPU is lent). Other work shares the
machine's cores; read the ratios rather than the absolute figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mesh import examples  # noqa: E402
from mesh.gen import grpc_predict_v2_pb2 as pb  # noqa: E402
from mesh.gen import grpc_predict_v2_pb2_grpc as pb_grpc  # noqa: E402
from mesh.gen import runtime_pb2 as rpb  # noqa: E402
from mesh.gen import runtime_pb2_grpc  # noqa: E402
from mesh.lifecycle import free_port  # noqa: E402

MB = 1_000_000


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@contextmanager
def process(cmd: list[str], ready: Callable[[], bool], log: Path) -> Iterator[None]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, env=child_env())
    try:
        deadline = time.monotonic() + 90
        while not ready():
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[2:4]} exited: {log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[2:4]} did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def build_models(store: Path, quick: bool) -> list[tuple[str, str, Path]]:
    """(name, storage path, file)."""
    onnx = examples.onnx_mlp(store / "onnx", sizes=(64, 2048, 2048, 10))
    models = [("onnx MLP", "onnx", onnx)]
    if not quick:
        big = examples.onnx_mlp(store / "onnx-big", sizes=(64, 4096, 4096, 10))
        xgb = examples.xgboost_booster(store / "xgb", n_trees=2000)
        models += [("onnx MLP, large", "onnx-big", big), ("xgboost", "xgb", xgb)]
    return models


def scrape(port: int, name: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    for line in text.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


@contextmanager
def pod(
    work: Path, sock: Path, label: str, capacity: int, host_tier: int, metrics_port: int = 0
) -> Iterator[
    tuple[Callable[..., rpb.LoadModelResponse], Callable[[str], None], Callable[[str], None]]
]:
    """A pod process; (load, unload, wait until demoted) over its control API."""
    port = free_port()
    metrics = ["--metrics-port", str(metrics_port)] if metrics_port else ["--no-metrics"]
    cmd = [
        sys.executable, "-m", "mesh", "pod", "--host", "127.0.0.1", "--port", str(port),
        *metrics, "--puller", f"unix:{sock}", "--capacity", str(capacity),
        "--host-tier", str(host_tier), "--runtimes", "onnx,xgboost", "--log-level", "WARNING",
    ]  # fmt: skip
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    control = runtime_pb2_grpc.RuntimeStub(channel)
    v2 = pb_grpc.GRPCInferenceServiceStub(channel)

    def ready() -> bool:
        try:
            return bool(v2.ServerReady(pb.ServerReadyRequest(), timeout=1).ready)
        except grpc.RpcError:
            return False

    def load(model_id: str, storage_path: str) -> rpb.LoadModelResponse:
        request = rpb.LoadModelRequest(model_id=model_id, storage_path=storage_path)
        return control.LoadModel(request, timeout=300)

    def unload(model_id: str) -> None:
        control.UnloadModel(rpb.UnloadModelRequest(model_id=model_id), timeout=60)

    def demoted(model_id: str) -> None:
        """Wait until the model is in the host tier (its file is read after the eviction)."""
        deadline = time.monotonic() + 60
        while model_id not in {
            m.model_id for m in control.RuntimeStatus(rpb.RuntimeStatusRequest()).demoted
        }:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{model_id} did not reach the host tier")
            time.sleep(0.01)

    try:
        with process(cmd, ready, work / f"pod-{label}.log"):
            yield load, unload, demoted
    finally:
        channel.close()


def bench_model(
    work: Path, sock: Path, name: str, path: str, file: Path, reps: int
) -> dict[str, Any]:
    size = file.stat().st_size
    # What two copies measure on a pod with room for many: the measured pod gets room for one
    # copy with a margin, and a second copy's estimate does not fit beside it.
    with pod(work, sock, f"{path}-calibrate", 1 << 40, 0) as (load, _, _):
        loads = [load(m, path) for m in ("a", "b", "c")]
    # The pod refuses a load whose estimate exceeds its capacity, so the estimate counts too.
    capacity = int(max(max(r.size_bytes, r.estimated_bytes) for r in loads) * 1.6)
    rel = file.relative_to(work / "store" / path)
    for rep in range(reps):  # a copy per repetition under another path: a cold pull each
        copy = work / "store" / "copies" / path / str(rep) / rel
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(file, copy)
    promote, warm, cold = [], [], []
    metrics_port = free_port()
    with pod(work, sock, path, capacity, 4 * size, metrics_port) as (load_from, unload, demoted):

        def load(model_id: str, storage_path: str = path) -> rpb.LoadModelResponse:
            return load_from(model_id, storage_path)

        load("m")
        for rep in range(reps):
            # Into the host tier: load other copies until one evicts it (sizes are measured,
            # and a copy's measured size varies from load to load). Then unload them, so that
            # the timed loads below all find room and evict nothing.
            fillers: list[str] = []
            evicted: list[str] = []
            while "m" not in evicted:
                if len(fillers) == 4:
                    raise RuntimeError(f"{name}: {fillers} did not evict the model")
                fillers.append(f"f{len(fillers)}")
                evicted = list(load(fillers[-1]).evicted)
            demoted("m")
            for f in fillers:
                unload(f)
            seconds, _ = timed(lambda: load("m"))
            promote.append(seconds)
            unload("m")  # the host copy goes too
            seconds, _ = timed(lambda: load("m"))
            warm.append(seconds)
            unload("m")
            cold_path = f"copies/{path}/{rep}"
            seconds, _ = timed(lambda: load("m", cold_path))  # noqa: B023  (called at once)
            cold.append(seconds)
        promotions = scrape(metrics_port, "mesh_pod_promotions_total")
        if promotions != reps:
            raise RuntimeError(f"{name}: {promotions} promotions, expected {reps}")
    p, w, c = (statistics.median(x) for x in (promote, warm, cold))
    return {
        "model": name,
        "file_bytes": size,
        "capacity": capacity,
        "promotion_s": p,
        "reload_puller_disk_s": w,
        "reload_puller_cold_s": c,
        "ratio_disk": w / p,
        "ratio_cold": c / p,
        "samples": {"promotion": promote, "disk": warm, "cold": cold},
    }


def report(rows: list[dict[str, Any]], reps: int) -> str:
    lines = [
        f"LoadModel wall time, median of {reps} (ms); ratio = reload / promotion, same run",
        "",
        "| model | file | promotion | reload, puller disk hit | reload, cold pull | ratios |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['file_bytes'] / MB:.1f} MB | {r['promotion_s'] * 1e3:.1f} "
            f"| {r['reload_puller_disk_s'] * 1e3:.1f} | {r['reload_puller_cold_s'] * 1e3:.1f} "
            f"| {r['ratio_disk']:.2f}x, {r['ratio_cold']:.2f}x |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one small model only")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mesh-bench-tiers-", dir="/tmp"))
    try:
        store = work / "store"
        models = build_models(store, args.quick)
        config = work / "storage.json"
        config.write_text(json.dumps({"default": {"type": "file", "root": str(store)}}))
        sock = work / "puller.sock"
        puller = [
            sys.executable, "-m", "mesh", "puller", "--listen", f"unix:{sock}",
            "--cache-dir", str(work / "cache"), "--cache-bytes", "4Gi",
            "--storage-config", str(config), "--no-metrics", "--log-level", "WARNING",
        ]  # fmt: skip
        rows = []
        with process(puller, sock.exists, work / "puller.log"):
            for name, path, file in models:
                print(f"{name} ...", flush=True)
                rows.append(bench_model(work, sock, name, path, file, args.reps))
        text = report(rows, args.reps)
        print(text)
        if args.json:
            machine = {"python": platform.python_version(), "cpus": str(os.cpu_count())}
            args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
