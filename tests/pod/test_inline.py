"""Which calls run on the loop and which in the pool (mesh.pod.inline), on a controlled clock."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from mesh.pod.inline import MAX_INLINE_BYTES, PROBE_EVERY, WARM_UP, InlineCalls


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _call(clock: Clock, seconds: float) -> str:
    """A framework call that takes `seconds` on the clock; where it ran."""
    clock.now += seconds
    return "loop" if threading.current_thread() is threading.main_thread() else "pool"


async def test_short_calls_move_to_the_loop_after_the_warm_up_and_long_ones_go_back() -> None:
    clock = Clock()
    with ThreadPoolExecutor(1) as pool:
        calls = InlineCalls(pool, threshold=0.001, clock=clock)
        where = [await calls.run("m", 100, _call, clock, 0.0001) for _ in range(WARM_UP + 4)]
        assert where[:WARM_UP] == ["pool"] * WARM_UP  # timed in the pool first
        assert where[WARM_UP:] == ["loop"] * 4
        # Calls that became long move the mean over the threshold: back to the pool.
        where = [await calls.run("m", 100, _call, clock, 0.01) for _ in range(3)]
        assert where[0] == "loop" and where[-1] == "pool"
        # Another model is timed on its own.
        assert await calls.run("other", 100, _call, clock, 0.0001) == "pool"


async def test_large_requests_probes_and_a_zero_threshold_stay_in_the_pool() -> None:
    clock = Clock()
    with ThreadPoolExecutor(1) as pool:
        calls = InlineCalls(pool, threshold=0.001, clock=clock)
        for _ in range(WARM_UP):
            await calls.run("m", 100, _call, clock, 0.0001)
        assert await calls.run("m", MAX_INLINE_BYTES + 1, _call, clock, 0.0001) == "pool"
        where = [await calls.run("m", 100, _call, clock, 0.0001) for _ in range(2 * PROBE_EVERY)]
        assert 1 <= where.count("pool") <= 3  # one call in PROBE_EVERY is timed in the pool
        calls.forget("m")  # unloaded: a new copy starts over
        assert await calls.run("m", 100, _call, clock, 0.0001) == "pool"

        off = InlineCalls(pool, threshold=0.0, clock=clock)
        where = [await off.run("m", 100, _call, clock, 0.0) for _ in range(WARM_UP + 4)]
        assert where == ["pool"] * (WARM_UP + 4)


async def test_the_edges_carry_the_request_size_so_a_large_request_stays_in_the_pool() -> None:
    """The gRPC and REST edges and mesh serve's in-process call convert with request_of /
    wire_infer: the size they put in the neutral request is what keeps a large request of a
    fast model off the event loop (decoding megabytes there would stall every other call)."""
    from mesh.gen import grpc_predict_v2_pb2 as pb
    from mesh.inference import InferRequest, InferResponse
    from mesh.pod.wire import request_of, wire_infer

    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="x", datatype="FP32", shape=[1, 32768])
    message.raw_input_contents.append(b"\0" * (4 * 32768))
    small = pb.ModelInferRequest(model_name="m")
    small.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    small.raw_input_contents.append(b"\0" * 16)

    clock = Clock()
    with ThreadPoolExecutor(1) as pool:
        calls = InlineCalls(pool, threshold=0.001, clock=clock)
        for _ in range(WARM_UP):
            await calls.run("m", request_of(small).size, _call, clock, 0.0001)
        assert calls.inline("m", request_of(small).size)  # a fast model's small call: the loop
        assert request_of(message).size >= message.ByteSize()
        assert not calls.inline("m", request_of(message).size)

    seen: list[InferRequest] = []

    class Plane:
        async def infer(self, request: InferRequest, name: str | None = None) -> InferResponse:
            seen.append(request)
            return InferResponse("m", "", [])

    await wire_infer(Plane())(message.SerializeToString(), "")
    assert seen[0].size > MAX_INLINE_BYTES


async def test_a_call_still_queued_for_a_worker_never_runs_once_its_caller_is_cancelled() -> None:
    """An overloaded pod: a request whose client gave up while it waited for a worker is not
    computed later, and its caller (holding the model) ends at once; a call already running
    keeps its caller until it is over."""
    import asyncio

    from mesh.pod.batching import in_worker

    gate = threading.Event()
    ran: list[str] = []

    def busy() -> None:
        ran.append("busy")
        gate.wait(30)

    with ThreadPoolExecutor(1) as pool:
        running = asyncio.create_task(in_worker(pool, busy))
        queued = asyncio.create_task(in_worker(pool, ran.append, "queued"))
        while not ran:  # the worker is in the first call
            await asyncio.sleep(0.001)
        await asyncio.sleep(0)
        queued.cancel()
        running.cancel()
        done, _ = await asyncio.wait([queued], timeout=10)
        assert queued in done and queued.cancelled()  # no wait for the worker to come free
        assert not running.done()  # its call is still using the model
        gate.set()
        await asyncio.gather(running, return_exceptions=True)
    assert ran == ["busy"]  # the queued call never ran
