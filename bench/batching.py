"""Adaptive batching on the pod: one booster served with and without it, in one run.

    .venv/bin/python bench/batching.py            # 2 repeats x 5 s per cell (~2.5 min on 2 cores)
    .venv/bin/python bench/batching.py --quick    # 1 repeat x 2 s per cell

One pod (`mesh pod`, a subprocess) serves the same XGBoost booster (100 trees, depth 6, 64
features) under three names: `plain` (no batching), `batch` (`batch.max_size` 32, no delay: the
requests that arrive while the model is busy form the next call) and `batch-1ms` (the same with
`batch.max_delay_ms` 1). The closed-loop client of bench/harness.py sends batch-1 requests at
concurrency 1, 8 and 32, interleaving the three models per repeat. The report gives req/s, p50
and p99, and each batching variant's ratio to `plain` from the same run, with the mean rows per
framework call read from the pod's `mesh_pod_batch_rows` histogram.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Server, closed_loop, free_port, grpc_ready, table

VARIANTS: dict[str, dict[str, str]] = {
    "plain": {},
    "batch": {"batch.max_size": "32"},
    "batch-1ms": {"batch.max_size": "32", "batch.max_delay_ms": "1"},
}


def payload(model: str) -> bytes:
    from mesh.gen import grpc_predict_v2_pb2 as pb

    x = np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)
    tensor = pb.ModelInferRequest.InferInputTensor(name="input__0", datatype="FP32", shape=[1, 64])
    request = pb.ModelInferRequest(
        model_name=model, inputs=[tensor], raw_input_contents=[x.tobytes()]
    )
    return request.SerializeToString()


def batch_rows(metrics_port: int) -> tuple[float, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read()
    found = {
        k: float(v) for k, v in re.findall(rb"^mesh_pod_batch_rows_(count|sum) (\S+)$", text, re.M)
    }
    return found.get(b"count", 0.0), found.get(b"sum", 0.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.repeats, args.warmup = 2.0, 1, 0.5
    concurrencies = [int(c) for c in args.concurrency.split(",")]

    from mesh import examples

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mesh-batching-") as tmp:
        work = Path(tmp)
        first = examples.xgboost_booster(work / "models" / "plain")
        for name, options in VARIANTS.items():
            folder = work / "models" / name
            folder.mkdir(parents=True, exist_ok=True)
            if name != "plain":
                (folder / first.name).write_bytes(first.read_bytes())
            (folder / "mesh.json").write_text(json.dumps({"options": options}))
        port, metrics = free_port(), free_port()
        argv_pod = [
            sys.executable, "-m", "mesh", "pod", "--models", str(work / "models"),
            "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics),
            "--capacity", "1Gi",
        ]  # fmt: skip
        pod = Server("pod", argv_pod, work / "pod.log", grpc_ready(port))
        with pod.running():
            for repeat in range(args.repeats):
                for name in VARIANTS:
                    body = payload(name)
                    for c in concurrencies:
                        before = batch_rows(metrics)
                        row = closed_loop(port, body, c, args.warmup, args.duration)
                        after = batch_rows(metrics)
                        n_calls = after[0] - before[0]
                        row.update(
                            model=name,
                            concurrency=c,
                            repeat=repeat,
                            rows_per_call=(after[1] - before[1]) / n_calls if n_calls else 1.0,
                        )
                        rows.append(row)
                        print(
                            f"  r{repeat} {name:9s} c={c:<3d} {row['rps']:8,.0f} req/s  "
                            f"p50 {row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:6.2f} ms  "
                            f"rows/call {row['rows_per_call']:.1f}",
                            flush=True,
                        )

    def cell(model: str, c: int, key: str) -> float:
        return statistics.median(
            r[key] for r in rows if r["model"] == model and r["concurrency"] == c
        )

    lines = []
    for c in concurrencies:
        base_rps, base_p50 = cell("plain", c, "rps"), cell("plain", c, "p50_ms")
        for name in VARIANTS:
            rps, p50 = cell(name, c, "rps"), cell(name, c, "p50_ms")
            lines.append([
                str(c), name, f"{rps:,.0f}", f"{p50:.2f}", f"{cell(name, c, 'p99_ms'):.2f}",
                f"{cell(name, c, 'rows_per_call'):.1f}",
                f"{rps / base_rps:.2f}x", f"{p50 / base_p50:.2f}x",
            ])  # fmt: skip
    print()
    print(
        f"{args.repeats} repeats x {args.duration:g} s per cell; "
        "XGBoost 100 trees, batch-1 requests"
    )
    print(table(
        ["c", "model", "req/s", "p50 ms", "p99 ms", "rows/call", "req/s / plain", "p50 / plain"],
        lines,
    ))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
