"""The router's hit path in Python alone: CPU per request of `Router.infer` on a hit.

bench/router.py measures the router between real gRPC clients and pods, where grpc.aio's own
cost dominates and a shared machine's noise swamps a few microseconds. This bench takes gRPC
out: a real Router over a real Mirror (MemoryStore: one pod holding one model), the pod's client
the router's own, with only the innermost call (the channel's multicallable) replaced by a
coroutine that answers at once. What is left is every line of mesh's hit path: the copy lookup,
the power-of-two pick, the forward and its error mapping, the counters.

    python bench/router_hitpath.py                 # 200,000 calls, best of 5 rounds
    python bench/router_hitpath.py --calls 50000

It runs against the tree on PYTHONPATH, so the same file measures an older checkout too (it
knows the pod client before and after the pod transport interface, mesh.router.transport).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from mesh.cluster.codec import Keys, encode
from mesh.cluster.memory import MemoryStore
from mesh.cluster.mirror import Mirror
from mesh.cluster.records import InstanceRecord, ModelRecord, PlacementRecord, PlacementState
from mesh.router.core import Router
from mesh.router.pods import PodPool
from mesh.storageref import StorageRef


async def _answer(*args: Any, **kwargs: Any) -> bytes:
    return b"response"


def _pool() -> PodPool:
    try:
        from mesh.router.grpcpods import GrpcPods  # the pod transport interface (issue 9)
    except ImportError:
        return PodPool(2**20)  # type: ignore[arg-type]  # before it
    return PodPool(GrpcPods(2**20))


async def run(calls: int, rounds: int) -> list[float]:
    store, keys = MemoryStore(), Keys("/bench/")
    await store.put(keys.model("m"), encode(ModelRecord("m", "onnx", storage=StorageRef(path="m"))))
    await store.put(keys.instance("p"), encode(InstanceRecord("p", "127.0.0.1:1", 2**30)))
    placement = PlacementRecord("m", "p", PlacementState.LOADED, time.time(), 1000)
    await store.put(keys.placement("m", "p"), encode(placement))
    mirror = Mirror(store, keys)
    await mirror.start()
    pool = _pool()
    router = Router(store, mirror, keys, pool, router_id="bench", lease=None)
    client = pool.client("p", "127.0.0.1:1")
    if hasattr(client, "_infer"):
        client._infer = _answer  # the gRPC call inside the transport's error mapping
    else:
        client.infer = _answer  # before the transport interface: the multicallable itself
    data = b"\x0a\x01m" + b"\x00" * 200
    assert await router.infer(data, "m", 10.0) == b"response"
    per_call = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(calls):
            await router.infer(data, "m", 10.0)
        per_call.append((time.process_time() - started) / calls * 1e6)
    await mirror.aclose()
    await pool.aclose()
    return per_call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200_000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (the best is reported)")
    args = parser.parse_args()
    per_call = asyncio.run(run(args.calls, args.rounds))
    rounds = ", ".join(f"{t:.2f}" for t in per_call)
    print(f"Router.infer on a hit: {min(per_call):.2f} us CPU per call (best; rounds {rounds})")


if __name__ == "__main__":
    main()
