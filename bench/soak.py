"""Soak: load/unload cycles per runtime with the pod's RSS watched, and Zipf churn over many
models through a whole local mesh with every failed request counted. A benchmark, not CI.

    python bench/soak.py                      # 1,000 cycles per runtime; 30 min over 1,000 models
    python bench/soak.py --cycles 100 --churn-seconds 60 --models 200   # a short run

Part 1 starts one `mesh pod` (no etcd) and, per runtime (onnx, xgboost, torch, and the
transformers runtime with a tiny GPT-2 made here), loads and unloads one model `--cycles` times
through the control API, reading the pod's RSS from /proc after each unload (reported as a
curve of 20 points, with the first, final and peak values). The bound
is measured, not assumed: the RSS after the first tenth of the cycles (allocator and framework
caches warmed) is the baseline, and the run passes when the final RSS stays within
`--rss-bound` MiB of it. Part 2 runs `mesh up` (etcd, a router, two pods with pullers) with pods
too small for every model, registers `--models` XGBoost models, and drives Zipf(1.0) requests at
concurrency `--concurrency` for `--churn-seconds`; it passes with no failed request.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from harness import ROOT, child_env, free_port  # type: ignore[import-not-found]

# runtime -> (the model's directory under the soak's models, its format)
RUNTIMES = {
    "onnx": ("mlp", "onnx"),
    "xgboost": ("xgb", "xgboost"),
    "torch": ("ts", "torch"),
    "transformers": ("gpt2", "transformers"),
}
CURVE_POINTS = 20  # RSS samples reported per runtime (every cycles/20 cycles)


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _wait(channel: Any, proc: subprocess.Popen[bytes], what: str) -> None:
    import grpc

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"soak: {what} exited with {proc.returncode}")
        try:
            grpc.channel_ready_future(channel).result(1)
            return
        except grpc.FutureTimeoutError:
            continue
    raise SystemExit(f"soak: {what} did not start")


def cycles(
    models: Path, count: int, bound_mib: float, log: Path, runtimes: list[str]
) -> dict[str, Any]:
    import grpc

    from mesh.gen import runtime_pb2 as rpb
    from mesh.gen import runtime_pb2_grpc

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mesh", "pod", "--host", "127.0.0.1", "--port", str(port),
         "--no-metrics", "--capacity", "2Gi", "--log-level", "WARNING"],
        cwd=ROOT, env=child_env(), stderr=log.open("wb"),
    )  # fmt: skip
    results: dict[str, Any] = {}
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        _wait(channel, proc, "the pod")
        control = runtime_pb2_grpc.RuntimeStub(channel)  # type: ignore[no-untyped-call]
        for runtime in runtimes:
            model, fmt = RUNTIMES[runtime]
            rss = []
            started = time.perf_counter()
            for _ in range(count):
                control.LoadModel(
                    rpb.LoadModelRequest(model_id=model, path=str(models / model), format=fmt),
                    timeout=60,
                )
                control.UnloadModel(rpb.UnloadModelRequest(model_id=model), timeout=60)
                rss.append(_rss(proc.pid))
            seconds = time.perf_counter() - started
            base = rss[max(count // 10, 1) - 1]
            growth = (rss[-1] - base) / 2**20
            step = max(count // CURVE_POINTS, 1)
            results[runtime] = {
                # (cycle, MiB after its unload), every `step` cycles and the last
                "rss_curve_mib": [
                    (i + 1, round(rss[i] / 2**20, 1))
                    for i in sorted({*range(step - 1, count, step), count - 1})
                ],
                "cycles": count,
                "seconds": round(seconds, 1),
                "rss_first_mib": round(rss[0] / 2**20, 1),
                "rss_baseline_mib": round(base / 2**20, 1),
                "rss_final_mib": round(rss[-1] / 2**20, 1),
                "rss_peak_mib": round(max(rss) / 2**20, 1),
                "growth_after_baseline_mib": round(growth, 1),
                "within_bound": growth <= bound_mib,
            }
            print(f"cycles {runtime}: {json.dumps(results[runtime])}", flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
    return results


def churn(
    models: Path, count: int, seconds: float, concurrency: int, capacity: str, log: Path
) -> dict[str, Any]:
    import grpc
    import numpy as np

    from mesh.gen import management_pb2 as mpb
    from mesh.gen import management_pb2_grpc

    sys.path.insert(0, str(ROOT))
    from tests.helpers import infer_request

    port = free_port()
    up = subprocess.Popen(
        [sys.executable, "-m", "mesh", "up", "--storage", str(models), "--pods", "2",
         "--capacity", capacity, "--port", str(port)],
        cwd=ROOT, env=child_env(), stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        _wait(channel, up, "mesh up")
        management = management_pb2_grpc.ManagementStub(channel)  # type: ignore[no-untyped-call]
        ids = [f"m{i:04d}" for i in range(count)]
        for model in ids:
            management.RegisterModel(
                mpb.RegisterModelRequest(model_id=model, format="xgboost", storage_path="xgb"),
                timeout=30,
            )
        weights = [1 / (i + 1) for i in range(count)]
        requests = {m: infer_request(m, input__0=np.ones((1, 64), np.float32)) for m in ids}
        from mesh.gen import grpc_predict_v2_pb2_grpc as pb_grpc

        ok = Counter[str]()
        failed: list[str] = []
        stop = time.monotonic() + seconds

        def client(seed: int) -> None:
            rng = random.Random(seed)
            stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
            while time.monotonic() < stop:
                model = rng.choices(ids, weights)[0]
                try:
                    stub.ModelInfer(requests[model], timeout=30)
                    ok[model] += 1
                except grpc.RpcError as exc:
                    failed.append(f"{model}: {exc.code().name}: {exc.details()}")

        threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
        started = time.monotonic()
        for t in threads:
            t.start()
        timeline: list[dict[str, Any]] = []
        next_point = started + 60.0
        give_up = stop + 120.0
        while any(t.is_alive() for t in threads) and time.monotonic() < give_up:
            for t in threads:
                t.join(max(min(next_point - time.monotonic(), 1.0), 0.01))
            if time.monotonic() >= next_point or not any(t.is_alive() for t in threads):
                next_point += 60.0
                point = {
                    "at_s": round(time.monotonic() - started),
                    "requests": sum(ok.values()) + len(failed),
                    "failed": len(failed),
                }
                timeline.append(point)
                print(f"churn progress: {json.dumps(point)}", flush=True)
        listed = management.ListModels(mpb.ListModelsRequest(), timeout=30).models
        loaded = sum(1 for m in listed if m.state == "LOADED")
        result = {
            "models": count,
            "seconds": seconds,
            "concurrency": concurrency,
            "capacity_per_pod": capacity,
            "requests": sum(ok.values()) + len(failed),
            "failed": len(failed),
            "distinct_models_served": len(ok),
            "loaded_at_end": loaded,
            "first_failures": failed[:5],
            "timeline": timeline,
        }
        print(f"churn: {json.dumps(result)}", flush=True)
        return result
    finally:
        up.terminate()
        up.wait(60)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cycles", type=int, default=1000, help="load/unload cycles per runtime")
    p.add_argument("--rss-bound", type=float, default=32.0, help="MiB of RSS growth allowed")
    p.add_argument("--models", type=int, default=1000, help="models in the churn")
    p.add_argument("--churn-seconds", type=float, default=1800.0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--capacity", default="64Mi", help="model bytes per pod in the churn")
    p.add_argument(
        "--runtimes", default=",".join(RUNTIMES), help="runtimes to cycle, comma-separated"
    )
    p.add_argument("--skip-cycles", action="store_true")
    p.add_argument("--skip-churn", action="store_true")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from mesh import examples

    with tempfile.TemporaryDirectory(prefix="mesh-soak-") as tmp:
        models = Path(tmp) / "models"
        examples.onnx_mlp(models / "mlp")
        examples.xgboost_booster(models / "xgb", n_trees=20)
        examples.torchscript_mlp(models / "ts")
        runtimes = [r for r in args.runtimes.split(",") if r]
        if "transformers" in runtimes and not args.skip_cycles:
            from mesh.llm import examples as llm_examples

            llm_examples.tiny_gpt2(models / "gpt2")
        out: dict[str, Any] = {}
        if not args.skip_cycles:
            out["cycles"] = cycles(
                models, args.cycles, args.rss_bound, Path(tmp) / "pod.log", runtimes
            )
        if not args.skip_churn:
            out["churn"] = churn(
                models, args.models, args.churn_seconds, args.concurrency, args.capacity,
                Path(tmp) / "up.log",
            )  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    passed = all(r["within_bound"] for r in out.get("cycles", {}).values())
    passed = passed and out.get("churn", {}).get("failed", 0) == 0
    print("soak:", "PASSED" if passed else "FAILED")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
