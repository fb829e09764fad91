"""`mesh serve`'s hit path in process: what its router adds to a request its pod answers.

    .venv/bin/python bench/serve_hitpath.py                  # 3 rounds x 20,000 calls, c=32
    .venv/bin/python bench/serve_hitpath.py --router-only    # the model call a no-op
    .venv/bin/python bench/serve_hitpath.py --calls 5000 --rounds 2 --concurrency 1

Built as `mesh serve` builds it (mesh.embedded): a router and a pod on one in-memory store in
this process, the pod's data plane called in process, with one tiny ONNX model (an 8x8 MLP)
loaded by the first request. No gRPC server is in the measured path: `many` concurrent tasks
call the router's ModelInfer handler (mesh.router.service.RouterInference.model_infer, with
its metrics, on a stand-in for grpc.aio's context that carries a user-agent and no deadline)
and, in the same run and interleaved with it, the pod's data plane directly (the
`wire_infer` the router calls: the same-run baseline). Each variant reports this process's CPU
per request (time.process_time; the best and the median of the rounds); the router's cost is
the difference, and the ratio the router's over the pod's.

`--router-only` replaces the model call (the pod's data plane) with a coroutine that answers
fixed bytes at once, for both variants: what is left on the router's side is the router alone
(name, resolve, copy lookup, pick, watch, deadline, counts, metrics), and the baseline is the
no-op itself.

It is a benchmark, not a test: no verdict, and nothing asserted but the first answers' bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prometheus_client import CollectorRegistry  # noqa: E402

from mesh import examples  # noqa: E402
from mesh.cluster.codec import Keys  # noqa: E402
from mesh.cluster.memory import MemoryStore  # noqa: E402
from mesh.embedded import register_directory  # noqa: E402
from mesh.gen import grpc_predict_v2_pb2 as pb  # noqa: E402
from mesh.pod.artifacts import DirectoryArtifacts  # noqa: E402
from mesh.pod.server import PodServer  # noqa: E402
from mesh.pod.settings import PodSettings  # noqa: E402
from mesh.pod.wire import wire_infer  # noqa: E402
from mesh.router.metrics import RouterMetrics  # noqa: E402
from mesh.router.server import RouterServer  # noqa: E402
from mesh.router.service import RouterInference  # noqa: E402
from mesh.router.settings import RouterSettings  # noqa: E402
from mesh.settings import ServerSettings  # noqa: E402

MODEL = "tiny"
POD = "embedded"


class Context:
    """What RouterInference.model_infer reads of grpc.aio's ServicerContext: a client's
    metadata (a user-agent, no routing header) and no deadline."""

    _metadata = (("user-agent", "grpc-python/1.71.0 grpc-c/46.0.0 (linux; chttp2)"),)

    def invocation_metadata(self) -> Any:
        return self._metadata

    def time_remaining(self) -> float | None:
        return None


def request() -> bytes:
    message = pb.ModelInferRequest(model_name=MODEL, id="1")
    tensor = message.inputs.add(name="input", datatype="FP32")
    tensor.shape.extend([1, 8])
    message.raw_input_contents.append(np.ones((1, 8), np.float32).tobytes())
    return message.SerializeToString()


async def measure(call: Callable[[], Awaitable[Any]], calls: int, concurrency: int) -> float:
    """CPU microseconds per call of `calls` calls from `concurrency` tasks."""
    left = calls

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    started = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - started) / calls * 1e6


async def run(args: argparse.Namespace, models: Path) -> dict[str, list[float]]:
    store, keys = MemoryStore(), Keys()
    await register_directory(store, keys, models)
    pod = PodServer(
        PodSettings(
            server=ServerSettings(host="127.0.0.1", port=0, metrics_port=None),
            data_port=None, pod_id=POD,
        ),
        artifacts=DirectoryArtifacts(models), store=store,
    )  # fmt: skip
    await pod.start()
    router_server = RouterServer(
        RouterSettings(
            server=ServerSettings(host="127.0.0.1", port=0, rest_port=None, metrics_port=None)
        ),
        store=store,
    )
    await router_server.start()
    assert pod.plane is not None  # started
    assert router_server.router is not None
    local = wire_infer(pod.plane)
    router_server.pool.serve_in_process(POD, local)
    inference = RouterInference(router_server.router, RouterMetrics(CollectorRegistry()))
    context: Any = Context()
    data = request()
    through_router = await inference.model_infer(data, context)  # the miss: loads the model
    answer = await local(data, MODEL)
    assert through_router == answer, "the router changed the answer"
    if args.router_only:

        async def noop(data: bytes, model_id: str) -> bytes:
            return answer

        local = noop
        router_server.pool.serve_in_process(POD, local)
    variants: dict[str, Callable[[], Awaitable[Any]]] = {
        "pod": lambda: local(data, MODEL),
        "router": lambda: inference.model_infer(data, context),
    }
    for call in variants.values():  # warm-up
        await measure(call, min(args.calls, 2000), args.concurrency)
    results: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(args.rounds):
        order = list(variants) if round_ % 2 == 0 else list(reversed(variants))
        for name in order:
            results[name].append(await measure(variants[name], args.calls, args.concurrency))
    await router_server.aclose()
    await pod.aclose()
    await store.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20_000, help="calls per round and variant")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, variants interleaved")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent callers")
    parser.add_argument(
        "--router-only", action="store_true", help="the model call a no-op: the router alone"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp)
        examples.onnx_mlp(models / MODEL, sizes=(8, 8))
        results = asyncio.run(run(args, models))
    best = {name: min(values) for name, values in results.items()}
    median = {name: statistics.median(values) for name, values in results.items()}
    what = "a no-op model call" if args.router_only else f"{MODEL} (ONNX 8x8)"
    print(
        f"{what}, c={args.concurrency}, {args.rounds} rounds x {args.calls} calls, "
        "CPU us per request (best / median; rounds)"
    )
    for name, values in results.items():
        rounds = ", ".join(f"{v:.1f}" for v in values)
        print(f"  {name:<7} {best[name]:8.1f} / {median[name]:8.1f}   ({rounds})")
    added = (
        f"  router - pod: {best['router'] - best['pod']:.1f} us (best), "
        f"{median['router'] - median['pod']:.1f} us (median)"
    )
    if not args.router_only:  # against a no-op, a ratio says nothing
        added += f"; router / pod: {median['router'] / median['pod']:.2f}x (median)"
    print(added)


if __name__ == "__main__":
    main()
