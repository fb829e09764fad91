"""LoadModel through a pod's control API against loading in process, for ~1 ms loads.

    .venv/bin/python bench/loads.py                     # 40 loads per model
    .venv/bin/python bench/loads.py --reps 200 --profile out   # py-spy of the pod, raw stacks

One `mesh pod` (no etcd, a local model directory) and, in this process, the same load the
pod's runtime does (ONNX Runtime with one thread; an XGBoost Booster with one thread). Each
LoadModel names a fresh model id (a real load, never "already loaded"), then UnloadModel; the
loads alternate with in-process loads of the same file, so that the machine's load spreads
over both alike. Reported: medians and the ratio LoadModel / in process (target: <= 2x), and
the pod's own `load_seconds` (its time from claim to loaded, without the RPC).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Server, free_port, grpc_ready, table


def _ort(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _xgb(path: Path) -> Any:
    import xgboost as xgb

    return xgb.Booster(params={"nthread": 1}, model_file=str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=40, help="loads per model")
    parser.add_argument("--profile", help="py-spy raw stacks of the pod to FILE.txt")
    parser.add_argument("--pod-args", default="", help="more `mesh pod` flags, one string")
    args = parser.parse_args(argv)

    import grpc

    from mesh import examples
    from mesh.gen import runtime_pb2 as rpb
    from mesh.gen import runtime_pb2_grpc

    rows = []
    with tempfile.TemporaryDirectory(prefix="mesh-loads-") as tmp:
        work = Path(tmp)
        models = {
            "mlp": ("onnx", examples.onnx_mlp(work / "models" / "mlp", sizes=(64, 256, 256, 10))),
            "xgb": ("xgboost", examples.xgboost_booster(work / "models" / "xgb", n_features=64,
                                                        n_trees=100, depth=6)),
        }  # fmt: skip
        port = free_port()
        argv_pod = [
            sys.executable, "-m", "mesh", "pod", "--models", str(work / "models"),
            "--host", "127.0.0.1", "--port", str(port), "--capacity", "2Gi",
            "--runtimes", "onnx,xgboost", "--metrics-port", str(free_port()),
            *args.pod_args.split(),
        ]  # fmt: skip
        pod = Server("mesh pod", argv_pod, work / "pod.log", grpc_ready(port))
        with pod.running(), grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = runtime_pb2_grpc.RuntimeStub(channel)  # type: ignore[no-untyped-call]
            spy = None
            if args.profile:
                spy = subprocess.Popen(
                    [str(Path(sys.executable).parent / "py-spy"), "record", "-o",
                     f"{args.profile}.txt", "--format", "raw", "-p", str(pod.pid),
                     "--rate", "500", "--nonblocking", "--threads"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                time.sleep(1)
            for key, (fmt, file) in models.items():
                local_load = _ort if fmt == "onnx" else _xgb
                local: list[float] = []
                rpc: list[float] = []
                server: list[float] = []
                for i in range(-2, args.reps):  # two untimed warm-ups each way
                    t0 = time.perf_counter()
                    obj = local_load(file)
                    took = time.perf_counter() - t0
                    del obj
                    request = rpb.LoadModelRequest(
                        model_id=f"{key}-{i}-{os.getpid()}", path=str(file), format=fmt
                    )
                    t0 = time.perf_counter()
                    response = stub.LoadModel(request, timeout=60)
                    seconds = time.perf_counter() - t0
                    if response.already_loaded:
                        raise RuntimeError(f"{request.model_id} was already loaded")
                    stub.UnloadModel(rpb.UnloadModelRequest(model_id=request.model_id), timeout=60)
                    if i >= 0:
                        local.append(took)
                        rpc.append(seconds)
                        server.append(response.load_seconds)
                row = {
                    "model": key,
                    "reps": args.reps,
                    "inproc_ms": statistics.median(local) * 1e3,
                    "rpc_ms": statistics.median(rpc) * 1e3,
                    "server_ms": statistics.median(server) * 1e3,
                }
                rows.append(row)
                print(f"  {key}: in process {row['inproc_ms']:.2f} ms, LoadModel "
                      f"{row['rpc_ms']:.2f} ms, load_seconds {row['server_ms']:.2f} ms",
                      flush=True)  # fmt: skip
            if spy is not None:
                spy.send_signal(2)
                spy.wait(60)

    print()
    print(table(
        ["model", "reps", "in process ms", "LoadModel ms", "pod load_seconds ms",
         "LoadModel / in process", "target <= 2x"],
        [[r["model"], str(r["reps"]), f"{r['inproc_ms']:.2f}", f"{r['rpc_ms']:.2f}",
          f"{r['server_ms']:.2f}", f"{r['rpc_ms'] / r['inproc_ms']:.2f}x",
          "MET" if r["rpc_ms"] <= 2 * r["inproc_ms"] else "MISSED"] for r in rows],
    ))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
