"""A cache miss against the number of models registered, and hits while misses run.

    .venv/bin/python bench/misses.py                    # 100, 1,000, 10,000, 100,000 models
    .venv/bin/python bench/misses.py --sizes 100,10000  # fewer steps

One `mesh up` (etcd, a router, one pod with its puller) over a directory holding one tiny ONNX
model (an FP32 identity). Model ids are registered through the router's management API, all
pointing at that model, in steps up to the largest size (RegisterModels, 1,000 a call); the
registration rate is reported.
At each step:

- **misses**: one client asks, one request at a time, for models never loaded yet (each a
  miss: the claim, placement, the pull, the load); the median and p90 of their latency;
- **hits alone**: a closed loop of 4 callers on one loaded model, p50 and p99;
- **hits while misses run**: the same hit loop beside the miss client.

Reported against the first step of the same run: the miss at N models over the miss at the
smallest N, and hit p99 with misses over hit p99 alone. The issue's targets: the miss at
100,000 within 1.2x the miss at 100; hit p99 while misses run within 2x hit p99 alone;
registering 100,000 models in under a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import closed_loop, free_port, one_pod_mesh, table
from register import register_batch

INPUT = "in_FP32"


def request(model: str) -> bytes:
    from mesh.gen import grpc_predict_v2_pb2 as pb

    x = np.ones(4, np.float32)
    tensor = pb.ModelInferRequest.InferInputTensor(name=INPUT, datatype="FP32", shape=[4])
    return pb.ModelInferRequest(
        model_name=model, inputs=[tensor], raw_input_contents=[x.tobytes()]
    ).SerializeToString()


async def register(port: int, ids: list[str]) -> float:
    """Register `ids` through RegisterModels, 1,000 a call (bench/register.py); the seconds."""
    return await register_batch(port, ids, 1000)


def misses(port: int, ids: list[str], out: list[float]) -> None:
    """One request at a time, each for a model never loaded: the latency of each miss."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call: Any = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=None,
            response_deserializer=None,
        )
        for model in ids:
            t0 = time.perf_counter()
            call(request(model), timeout=120)
            out.append(time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000,100000")
    parser.add_argument("--misses", type=int, default=40, help="misses measured per step")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds of each hit loop")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.sizes.split(",")]

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mesh-misses-") as tmp:
        work = Path(tmp)
        port = free_port()
        mesh = one_pod_mesh(work, port)
        with mesh.running():
            registered = 0
            hot = "hot"
            asyncio.run(register(port, [hot]))
            for size in sizes:
                # Misses ask for ids beyond the step's count, registered with it.
                fresh = [f"m{i:06d}" for i in range(registered, size)]
                spare = [f"x{size}-{i:04d}" for i in range(2 * args.misses)]
                seconds = asyncio.run(register(port, fresh + spare))
                registered = size
                closed_loop(port, request(hot), 1, 0.2, 0.3)  # the hot model loaded
                alone = closed_loop(port, request(hot), 4, 0.5, args.duration)
                latencies: list[float] = []
                thread = threading.Thread(
                    target=misses, args=(port, spare[: args.misses], latencies)
                )
                thread.start()
                beside = closed_loop(port, request(hot), 4, 0.2, args.duration)
                thread.join()
                more: list[float] = []
                misses(port, spare[args.misses :], more)  # misses with no hit load
                row = {
                    "models": size + len(spare) + 1,
                    "register_per_s": (len(fresh) + len(spare)) / seconds,
                    "miss_p50_ms": statistics.median(more) * 1e3,
                    "miss_p90_ms": float(np.percentile(more, 90)) * 1e3,
                    "hit_p99_alone_ms": alone["p99_ms"],
                    "hit_p99_with_misses_ms": beside["p99_ms"],
                    "hit_rps_alone": alone["rps"],
                    "hit_rps_with_misses": beside["rps"],
                }
                rows.append(row)
                print(
                    f"  {row['models']:>7,} models: register {row['register_per_s']:,.0f}/s, "
                    f"miss p50 {row['miss_p50_ms']:.1f} ms, hit p99 {row['hit_p99_alone_ms']:.1f}"
                    f" ms alone, {row['hit_p99_with_misses_ms']:.1f} ms with misses",
                    flush=True,
                )

    base = rows[0]
    lines = [
        [
            f"{r['models']:,}", f"{r['register_per_s']:,.0f}", f"{r['miss_p50_ms']:.1f}",
            f"{r['miss_p90_ms']:.1f}", f"{r['miss_p50_ms'] / base['miss_p50_ms']:.2f}x",
            f"{r['hit_p99_alone_ms']:.1f}", f"{r['hit_p99_with_misses_ms']:.1f}",
            f"{r['hit_p99_with_misses_ms'] / r['hit_p99_alone_ms']:.2f}x",
            f"{r['hit_rps_alone']:,.0f}", f"{r['hit_rps_with_misses']:,.0f}",
        ]
        for r in rows
    ]  # fmt: skip
    print()
    print(table(
        ["models", "register/s", "miss p50 ms", "miss p90 ms", "miss / first",
         "hit p99 alone", "hit p99 w/ misses", "ratio", "hit/s alone", "hit/s w/ misses"],
        lines,
    ))  # fmt: skip
    last = rows[-1]
    print(
        f"\nmiss at {last['models']:,} models / at {base['models']:,}: "
        f"{last['miss_p50_ms'] / base['miss_p50_ms']:.2f}x (target <= 1.2x); hit p99 with misses "
        f"/ alone at {last['models']:,}: "
        f"{last['hit_p99_with_misses_ms'] / last['hit_p99_alone_ms']:.2f}x (target <= 2x); "
        f"registration {last['register_per_s']:,.0f}/s "
        f"(100,000 in under a minute needs >= 1,667/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
