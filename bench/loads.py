"""LoadModel through a pod's control API against loading in process, for ~1 ms loads.

    .venv/bin/python bench/loads.py                     # 40 loads per model
    .venv/bin/python bench/loads.py --baseline ../main  # and a pod run from another tree
    .venv/bin/python bench/loads.py --reps 200 --profile out   # py-spy of the pod, raw stacks

One `mesh pod` (no etcd, a local model directory) and, in this process, the same load the
pod's runtime does (ONNX Runtime with one thread; an XGBoost Booster read with one thread, as
`xgb.config_context(nthread=1)` makes it: a Booster's own `nthread` does not reach the reading,
which otherwise runs on every core's OpenMP thread, and on a busy machine took 5-16 ms instead
of 0.6, its idle threads spinning into the pod's next load). Each LoadModel names a fresh model
id (a real load, never "already loaded"), then UnloadModel; the loads alternate with in-process
loads of the same file, so that the machine's load spreads over both alike. With `--baseline`,
a second pod runs the same from another source tree (`git worktree add` of the commit to
compare with) and takes its turn in the same rounds: before and after in one run.

Reported: medians and the ratio LoadModel / in process (target: <= 2x), the pod's own
`load_seconds` (its time from claim to loaded, without the RPC), the median of what it
measured the model to take (`measured_bytes`; loads it could not measure alone, and so
charged the estimate, are counted beside it), and two floors under any
LoadModel: a ServerLive round trip to the same pod, which loads nothing, and the in-process
load again on a trimmed heap, as the pod measures its loads (the freed pages fault in anew).
The load average before and after the run says how much the machine was shared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Server, child_env, free_port, grpc_ready, table


def _ort(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _xgb(path: Path) -> Any:
    import xgboost as xgb

    with xgb.config_context(nthread=1):
        return xgb.Booster(params={"nthread": 1}, model_file=str(path))


@dataclass
class Pod:
    """One pod under test and its timings for the model being measured."""

    name: str
    server: Server
    stub: Any = None
    v2: Any = None
    rpc: list[float] = field(default_factory=list)
    server_s: list[float] = field(default_factory=list)
    live: list[float] = field(default_factory=list)
    measured: list[int] = field(default_factory=list)

    def reset(self) -> None:
        self.rpc, self.server_s, self.live, self.measured = [], [], [], []


def _pod(name: str, tree: Path, work: Path, args: argparse.Namespace) -> Pod:
    port = free_port()
    argv = [
        sys.executable, "-m", "mesh", "pod", "--models", str(work / "models"),
        "--host", "127.0.0.1", "--port", str(port), "--capacity", "2Gi",
        "--runtimes", "onnx,xgboost", "--metrics-port", str(free_port()),
        *args.pod_args.split(),
    ]  # fmt: skip
    env = child_env({"PYTHONPATH": str(tree)})
    server = Server(
        f"mesh pod ({name})", argv, work / f"pod-{name}.log", grpc_ready(port), env, tree
    )
    server.port = port
    return Pod(name, server)


@contextmanager
def _running(pods: list[Pod]) -> Iterator[None]:
    import grpc

    from mesh.gen import grpc_predict_v2_pb2_grpc, runtime_pb2_grpc

    with ExitStack() as stack:
        for pod in pods:
            stack.enter_context(pod.server.running())
            channel = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{pod.server.port}"))
            pod.stub = runtime_pb2_grpc.RuntimeStub(channel)  # type: ignore[no-untyped-call]
            pod.v2 = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        yield


def _round(pod: Pod, key: str, fmt: str, file: Path, i: int) -> None:
    """One LoadModel of a fresh id, one UnloadModel, one ServerLive; kept when i >= 0."""
    from mesh.gen import grpc_predict_v2_pb2 as pb
    from mesh.gen import runtime_pb2 as rpb

    request = rpb.LoadModelRequest(
        model_id=f"{key}-{pod.name}-{i}-{os.getpid()}", path=str(file), format=fmt
    )
    t0 = time.perf_counter()
    response = pod.stub.LoadModel(request, timeout=60)
    seconds = time.perf_counter() - t0
    if response.already_loaded:
        raise RuntimeError(f"{request.model_id} was already loaded")
    pod.stub.UnloadModel(rpb.UnloadModelRequest(model_id=request.model_id), timeout=60)
    t0 = time.perf_counter()
    pod.v2.ServerLive(pb.ServerLiveRequest(), timeout=60)
    live = time.perf_counter() - t0
    if i >= 0:
        pod.rpc.append(seconds)
        pod.server_s.append(response.load_seconds)
        pod.live.append(live)
        pod.measured.append(response.measured_bytes)


def _measure(pods: list[Pod], key: str, fmt: str, file: Path, reps: int) -> list[dict[str, Any]]:
    from mesh.pod.memory import trim_heap

    local_load: Callable[[Path], Any] = _ort if fmt == "onnx" else _xgb
    local: list[float] = []
    cold: list[float] = []
    for pod in pods:
        pod.reset()
    for i in range(-2, reps):  # two untimed warm-ups each way
        # The pods take turns going first, so that neither always follows the in-process load.
        order = pods if i % 2 == 0 else pods[::-1]
        for n, pod in enumerate(order):
            if n == 0:
                t0 = time.perf_counter()
                obj = local_load(file)
                took = time.perf_counter() - t0
                del obj
                # Again on a trimmed heap, as a pod measures its loads (mesh.pod.memory): the
                # pages the last load freed go back to the kernel and fault in anew.
                trim_heap()
                t0 = time.perf_counter()
                obj = local_load(file)
                took_cold = time.perf_counter() - t0
                del obj
                if i >= 0:
                    local.append(took)
                    cold.append(took_cold)
            _round(pod, key, fmt, file, i)
    inproc = statistics.median(local) * 1e3
    inproc_cold = statistics.median(cold) * 1e3
    rows = []
    for pod in pods:
        rows.append({
            "model": key, "pod": pod.name, "reps": reps, "inproc_ms": inproc,
            "cold_ms": inproc_cold,
            "rpc_ms": statistics.median(pod.rpc) * 1e3,
            "server_ms": statistics.median(pod.server_s) * 1e3,
            "live_ms": statistics.median(pod.live) * 1e3,
            "measured_kib": statistics.median(pod.measured) / 1024,
            "unmeasured": sum(1 for m in pod.measured if m == 0),
        })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=40, help="loads per model (and per pod)")
    parser.add_argument("--profile", help="py-spy raw stacks of the pod to FILE.txt")
    parser.add_argument("--pod-args", default="", help="more `mesh pod` flags, one string")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another source tree (a worktree of the commit to compare with): its pod runs "
        "beside this tree's, in the same rounds",
    )
    args = parser.parse_args(argv)

    from mesh import examples

    tree = Path(__file__).resolve().parent.parent
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mesh-loads-") as tmp:
        work = Path(tmp)
        models = {
            "mlp": ("onnx", examples.onnx_mlp(work / "models" / "mlp", sizes=(64, 256, 256, 10))),
            "xgb": ("xgboost", examples.xgboost_booster(work / "models" / "xgb", n_features=64,
                                                        n_trees=100, depth=6)),
        }  # fmt: skip
        pods = [_pod("this", tree, work, args)]
        if args.baseline is not None:
            pods.append(_pod("baseline", args.baseline.resolve(), work, args))
        with _running(pods):
            spy = None
            if args.profile:
                spy = subprocess.Popen(
                    [str(Path(sys.executable).parent / "py-spy"), "record", "-o",
                     f"{args.profile}.txt", "--format", "raw", "-p", str(pods[0].server.pid),
                     "--rate", "500", "--nonblocking", "--threads"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                time.sleep(1)
            for key, (fmt, file) in models.items():
                measured = _measure(pods, key, fmt, file, args.reps)
                rows += measured
                for r in measured:
                    print(f"  {key} ({r['pod']}): in process {r['inproc_ms']:.2f} ms "
                          f"({r['cold_ms']:.2f} on a trimmed heap), LoadModel "
                          f"{r['rpc_ms']:.2f} ms, load_seconds {r['server_ms']:.2f} ms, "
                          f"ServerLive {r['live_ms']:.2f} ms", flush=True)  # fmt: skip
            if spy is not None:
                spy.send_signal(2)
                spy.wait(60)
    load_after = os.getloadavg()

    print()
    print(table(
        ["model", "pod", "reps", "in process ms", "trimmed heap ms", "LoadModel ms",
         "pod load_seconds ms", "ServerLive ms", "measured KiB", "LoadModel / in process",
         "target <= 2x"],
        [[r["model"], r["pod"], str(r["reps"]), f"{r['inproc_ms']:.2f}", f"{r['cold_ms']:.2f}",
          f"{r['rpc_ms']:.2f}", f"{r['server_ms']:.2f}", f"{r['live_ms']:.2f}",
          f"{r['measured_kib']:.0f}" + (f" ({r['unmeasured']} not)" if r["unmeasured"] else ""),
          f"{r['rpc_ms'] / r['inproc_ms']:.2f}x",
          "MET" if r["rpc_ms"] <= 2 * r["inproc_ms"] else "MISSED"] for r in rows],
    ))  # fmt: skip
    print(f"\nload average (1 min): {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
