"""Channels to pods: a call cut short because its pod left the mesh is retryable at once; the
pod transport answers mesh errors, whose gRPC status (mesh.grpcstatus) is the pod's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc import aio

from mesh.cluster.codec import Keys
from mesh.errors import DeadlineExceeded, ModelNotFound, Unavailable
from mesh.grpcstatus import status_of
from mesh.router.core import Router
from mesh.router.grpcpods import GrpcPods
from mesh.router.pods import PodPool
from mesh.router.transport import LoadRequest


class HangingPod:
    """A gRPC server that takes every call and never answers it."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.server = aio.server()

        async def hang(request: bytes, context: aio.ServicerContext) -> bytes:
            self.entered.set()
            await asyncio.sleep(3600)
            return b""

        handler = grpc.unary_unary_rpc_method_handler(hang)
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("inference.GRPCInferenceService",
                                                  {"ModelInfer": handler}),
             grpc.method_handlers_generic_handler("mesh.runtime.v1.Runtime",
                                                  {"LoadModel": handler})]
        )  # fmt: skip
        self.port = self.server.add_insecure_port("127.0.0.1:0")


@pytest.fixture
async def hanging() -> AsyncIterator[HangingPod]:
    pod = HangingPod()
    await pod.server.start()
    yield pod
    await pod.server.stop(None)


async def test_a_load_in_flight_when_its_pod_leaves_ends_unavailable_at_once(
    hanging: HangingPod,
) -> None:
    pool = PodPool(GrpcPods(2**20))
    client = pool.client("gone", f"127.0.0.1:{hanging.port}")
    call = asyncio.create_task(client.load(LoadRequest(model_id="m"), timeout=60))
    await asyncio.wait_for(hanging.entered.wait(), 10)
    pool.forget("gone")  # the pod left the mirror: its channel closes
    with pytest.raises(Unavailable) as err:
        await asyncio.wait_for(call, 5)  # not a wait until the call's own deadline
    assert status_of(err.value) is grpc.StatusCode.UNAVAILABLE
    assert "pod gone left the mesh" in str(err.value)
    # A call begun on the closed channel by someone still holding the client: the same.
    await asyncio.sleep(0.1)
    with pytest.raises(Unavailable) as err:
        await asyncio.wait_for(client.load(LoadRequest(model_id="m"), timeout=60), 5)
    assert status_of(err.value) is grpc.StatusCode.UNAVAILABLE
    await pool.aclose()


async def test_a_forward_in_flight_when_its_pod_leaves_is_a_retryable_answer(
    hanging: HangingPod,
) -> None:
    pool = PodPool(GrpcPods(2**20))
    router = Router(None, None, Keys("/t/"), pool, router_id="r", lease=None)  # type: ignore[arg-type]
    client = pool.client("gone", f"127.0.0.1:{hanging.port}")
    forward = asyncio.create_task(router.forwarder.forward(client, b"", "m", time.monotonic() + 60))
    await asyncio.wait_for(hanging.entered.wait(), 10)
    pool.forget("gone")
    with pytest.raises(Unavailable) as answer:
        await asyncio.wait_for(forward, 5)
    assert status_of(answer.value) is grpc.StatusCode.UNAVAILABLE  # _infer retries it elsewhere
    assert client.outstanding == 0
    await pool.aclose()


async def test_a_client_giving_up_still_cancels_the_forward(hanging: HangingPod) -> None:
    pool = PodPool(GrpcPods(2**20))
    router = Router(None, None, Keys("/t/"), pool, router_id="r", lease=None)  # type: ignore[arg-type]
    client = pool.client("slow", f"127.0.0.1:{hanging.port}")
    forward = asyncio.create_task(router.forwarder.forward(client, b"", "m", time.monotonic() + 60))
    await asyncio.wait_for(hanging.entered.wait(), 10)
    forward.cancel()
    with pytest.raises(asyncio.CancelledError):
        await forward
    assert client.outstanding == 0
    await pool.aclose()


async def test_a_pod_in_this_process_is_called_not_dialled() -> None:
    """`mesh serve`'s pod: inference goes to its data plane by a call; its errors and the
    deadline come back as the errors (and so the statuses) a pod over gRPC answers, so the
    forward retries alike."""
    seen: list[tuple[bytes, str]] = []

    async def plane(data: bytes, model_id: str) -> bytes:
        seen.append((data, model_id))
        if model_id == "gone":
            raise ModelNotFound("model 'gone' is not loaded on this pod")
        if model_id == "slow":
            await asyncio.sleep(3600)
        return b"answer:" + data

    pool = PodPool(GrpcPods(2**20))
    pool.serve_in_process("here", plane)
    # Port 1 has no server: a dialled call could only fail.
    client = pool.client("here", "127.0.0.1:1")
    assert await client.infer(b"req", "m", 5) == b"answer:req"
    assert seen == [(b"req", "m")]
    with pytest.raises(ModelNotFound) as err:
        await client.infer(b"req", "gone", 5)
    assert status_of(err.value) is grpc.StatusCode.NOT_FOUND
    assert "gone" in str(err.value)
    with pytest.raises(DeadlineExceeded) as dead:
        await client.infer(b"req", "slow", 0.05)
    assert status_of(dead.value) is grpc.StatusCode.DEADLINE_EXCEEDED
    # The deadline's cancel was taken back: the caller goes on to answer its client.
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0)
    # A caller giving up is cancelled, not told that a deadline passed.
    waiting = asyncio.create_task(client.infer(b"req", "slow", 60))
    while len(seen) < 4:  # the call has reached the plane
        await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    # Any other pod is still dialled.
    assert type(pool.client("there", "127.0.0.1:1")).__name__ == "PodClient"
    await pool.aclose()


async def test_a_pod_in_this_process_keeps_its_deadline_across_every_wait_of_a_call() -> None:
    """The in-process client runs a call's first step itself and arms the deadline only once
    the call waits: a call that waits several times answers, or is cut at its deadline (its
    work cancelled) at whichever wait it is in, and a caller's cancel reaches it there."""
    stopped: list[str] = []

    async def plane(data: bytes, model_id: str) -> bytes:
        try:
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            if model_id == "slow":
                await asyncio.Future()  # never answers
            return b"answer:" + data
        except asyncio.CancelledError:
            stopped.append(model_id)
            raise

    pool = PodPool(GrpcPods(2**20))
    pool.serve_in_process("here", plane)
    client = pool.client("here", "127.0.0.1:1")
    assert await client.infer(b"req", "m", 5) == b"answer:req"
    assert await client.infer(b"req", "m", None) == b"answer:req"
    with pytest.raises(DeadlineExceeded):
        await client.infer(b"req", "slow", 0.05)
    assert stopped == ["slow"]
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    waiting = asyncio.create_task(client.infer(b"req", "slow", 60))
    for _ in range(5):  # past the call's first waits
        await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert stopped == ["slow", "slow"]
    at_first_wait = asyncio.create_task(client.infer(b"req", "slow", 60))
    await asyncio.sleep(0)  # the call has taken its first step
    at_first_wait.cancel()
    with pytest.raises(asyncio.CancelledError):
        await at_first_wait
    assert stopped == ["slow", "slow", "slow"]
    await pool.aclose()
