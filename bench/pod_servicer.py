"""The pod's ModelInfer in Python alone: CPU per request of the gRPC servicer's `model_infer`.

bench/pod.py measures the pod between real gRPC clients, where grpc.aio's own cost and a shared
machine's noise swamp a few microseconds. This bench takes the network out: a real DataPlane
over a real ModelCache and repository (an ONNX MLP and an XGBoost booster made here), the
pod's own InferenceService, called with a parsed ModelInferRequest as grpc.aio would call it.
What is left is every line of the pod's request path: the edge's conversion (where there is
one), the cache's acquire and release, the worker-thread hop, decode, the framework call,
encode, the metrics.

    python bench/pod_servicer.py                 # 2,000 calls per cell, best of 5 rounds
    python bench/pod_servicer.py --calls 500 --rounds 3

It runs against the tree on PYTHONPATH, so the same file measures an older checkout too. The
last line times the protobuf edge alone (mesh.pod.wire's request_of + message_of), where the
tree has one.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from mesh import examples
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.pod.cache import ModelCache
from mesh.pod.dataplane import DataPlane
from mesh.pod.repository import ModelRepository
from mesh.pod.service import InferenceService
from mesh.runtimes.registry import RuntimeRegistry

N_FEATURES = 64


class _Context:
    def invocation_metadata(self) -> tuple[Any, ...]:
        return ()


def _request(model: str, input_name: str, batch: int) -> pb.ModelInferRequest:
    array = np.random.default_rng(0).random((batch, N_FEATURES), dtype=np.float32)
    request = pb.ModelInferRequest(model_name=model, id="r")
    tensor = request.inputs.add(name=input_name, datatype="FP32")
    tensor.shape.extend(array.shape)
    request.raw_input_contents.append(array.tobytes())
    return request


async def _cell(service: InferenceService, request: pb.ModelInferRequest, calls: int) -> float:
    context: Any = _Context()
    await service.model_infer(request, context)
    started = time.process_time()
    for _ in range(calls):
        await service.model_infer(request, context)
    return (time.process_time() - started) / calls * 1e6


def _edge(request: pb.ModelInferRequest, response: pb.ModelInferResponse, calls: int) -> float:
    from mesh.inference import InferOutput, InferResponse
    from mesh.pod import wire

    # A neutral response as the data plane returns it, from the real response's fields.
    out = InferResponse(
        response.model_name,
        response.id,
        [
            InferOutput(t.name, t.datatype, tuple(t.shape), response.raw_output_contents[i])
            for i, t in enumerate(response.outputs)
        ],
    )
    started = time.process_time()
    for _ in range(calls):
        wire.request_of(request)
        wire.message_of(out)
    return (time.process_time() - started) / calls * 1e6


async def run(calls: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        examples.onnx_mlp(directory / "mlp", sizes=(N_FEATURES, 256, 256, 10))
        examples.xgboost_booster(directory / "xgb", n_features=N_FEATURES, n_trees=100, depth=6)
        runtimes = RuntimeRegistry.discover()
        cache = ModelCache(capacity=2**30, runtimes=runtimes)
        plane = DataPlane(cache, runtimes, repository=ModelRepository(directory, runtimes))
        plane.mark_ready()
        service = InferenceService(plane)
        print("| model | batch | us CPU per ModelInfer (best of rounds) | all rounds |")
        print("|-------|------:|---------------------------------------:|------------|")
        try:
            last = None
            for model in ("mlp", "xgb"):
                signature, _ = await plane.model_metadata(model)  # loads it
                for batch in (1, 32):
                    request = _request(model, signature.inputs[0].name, batch)
                    times = [await _cell(service, request, calls) for _ in range(rounds)]
                    shown = ", ".join(f"{t:.1f}" for t in times)
                    print(f"| {model} | {batch} | {min(times):.1f} | {shown} |")
                    context: Any = _Context()
                    last = (request, await service.model_infer(request, context))
            try:
                import mesh.pod.wire  # noqa: F401
            except ImportError:
                print("\nno protobuf edge in this tree (the data plane takes protobuf)")
            else:
                assert last is not None
                edge = min(_edge(*last, calls * 10) for _ in range(rounds))
                print(f"\nprotobuf edge alone (request_of + message_of, xgb b=32): {edge:.2f} us")
        finally:
            await plane.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per round and cell")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per cell (best is shown)")
    args = parser.parse_args()
    asyncio.run(run(args.calls, args.rounds))


if __name__ == "__main__":
    main()
