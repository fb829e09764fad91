"""Which calls run on the loop and which in the pool (mesh.pod.inline), on a controlled clock."""

from __future__ import annotations

import asyncio
import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

from mesh.pod.inline import MAX_INLINE_BYTES, PROBE_EVERY, WARM_UP, InlineCalls


class Clock:
    """The wall clock (called) and the calling thread's CPU clock (`thread`)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.cpu = 0.0

    def __call__(self) -> float:
        return self.now

    def thread(self) -> float:
        return self.cpu


def _call(clock: Clock, seconds: float, cpu: float | None = None, gil_wait: float = 0.0) -> str:
    """A framework call that takes `seconds` on the wall clock, `cpu` of them (all by default)
    on the thread's CPU, and `gil_wait` more on the wall clock in a worker (taking the GIL back
    from a busy loop); where it ran."""
    on_loop = threading.current_thread() is threading.main_thread()
    clock.now += seconds if on_loop else seconds + gil_wait
    clock.cpu += seconds if cpu is None else cpu
    return "loop" if on_loop else "pool"


async def test_short_calls_move_to_the_loop_after_the_warm_up_and_long_ones_go_back() -> None:
    clock = Clock()
    with ThreadPoolExecutor(1) as pool:
        calls = InlineCalls(pool, threshold=0.001, clock=clock, thread_clock=clock.thread)
        where = [await calls.run("m", 100, _call, clock, 0.0001) for _ in range(WARM_UP + 4)]
        assert where[:WARM_UP] == ["pool"] * WARM_UP  # timed in the pool first
        assert where[WARM_UP:] == ["loop"] * 4
        # Calls that became long move the mean over the threshold: back to the pool.
        where = [await calls.run("m", 100, _call, clock, 0.01) for _ in range(3)]
        assert where[0] == "loop" and where[-1] == "pool"
        # Another model is timed on its own.
        assert await calls.run("other", 100, _call, clock, 0.0001) == "pool"


async def test_a_short_call_slowed_in_the_pool_by_waits_for_the_gil_still_moves_to_the_loop() -> (
    None
):
    """The two states of the pod at c=32: a predict of 0.1 ms that a worker reads as 4 ms by
    wall clock (it waits for the GIL behind the busy loop) is short by its own CPU time, so it
    runs on the loop after the warm-up, and its probes in the pool do not send it back."""
    clock = Clock()
    with ThreadPoolExecutor(1) as pool:
        calls = InlineCalls(pool, threshold=0.001, clock=clock, thread_clock=clock.thread)
        where = [
            await calls.run("m", 100, _call, clock, 0.0001, None, 0.004)
            for _ in range(WARM_UP + 2 * PROBE_EVERY)
        ]
        assert where[:WARM_UP] == ["pool"] * WARM_UP
        assert where[WARM_UP : WARM_UP + 4] == ["loop"] * 4
        assert where.count("loop") >= 2 * PROBE_EVERY - 3  # only the probes in the pool


async def test_a_call_that_waits_without_cpu_runs_once_on_the_loop_then_rarely() -> None:
    """A call that blocks without burning the caller's CPU (a CUDA sync, a library's own
    threads) looks free by CPU time: the first one on the loop shows its 20 ms of wall clock and
    sends the model back to the pool, and the loop is tried again ever more rarely."""
    clock = Clock()
    with ThreadPoolExecutor(1) as pool:
        calls = InlineCalls(pool, threshold=0.001, clock=clock, thread_clock=clock.thread)
        where = [await calls.run("m", 100, _call, clock, 0.02, 0.0) for _ in range(4000)]
    tries = [i for i, place in enumerate(where) if place == "loop"]
    assert tries[0] == WARM_UP  # the one call that confirms (or not) the CPU time's verdict
    assert where[WARM_UP + 1 : WARM_UP + PROBE_EVERY] == ["pool"] * (PROBE_EVERY - 1)
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    assert gaps == sorted(gaps) and gaps[-1] > 8 * PROBE_EVERY  # backing off
    assert len(tries) <= 8  # in 4,000 calls


async def test_one_long_call_on_the_loop_sends_a_model_to_the_pool_for_a_while_not_for_good() -> (
    None
):
    """An outlier on the loop (a GC pause) moves a fast model to the pool, where a busy loop
    makes its calls read long by wall clock; it comes back to the loop after PROBE_EVERY calls
    instead of staying in the pool while the load lasts."""
    clock = Clock()
    with ThreadPoolExecutor(1) as pool:
        calls = InlineCalls(pool, threshold=0.001, clock=clock, thread_clock=clock.thread)
        for _ in range(WARM_UP + 1):
            await calls.run("m", 100, _call, clock, 0.0001, None, 0.004)
        assert await calls.run("m", 100, _call, clock, 0.05, None, 0.004) == "loop"
        where = [
            await calls.run("m", 100, _call, clock, 0.0001, None, 0.004)
            for _ in range(2 * PROBE_EVERY)
        ]
        assert where[:8] == ["pool"] * 8
        assert where[-8:] == ["loop"] * 8


async def test_a_call_on_the_loop_is_judged_by_wall_clock_only_when_none_of_its_pool_calls_runs() -> (
    None
):
    """While a call of the model is still in a worker, a call on the loop may wait for that
    worker's GIL, and its wall clock does not send the model back to the pool (unless it is
    too long for that to explain); once the pool is idle the same wall clock does."""
    clock = Clock()
    gate = threading.Event()
    with ThreadPoolExecutor(2) as pool:
        calls = InlineCalls(pool, threshold=0.001, clock=clock, thread_clock=clock.thread)
        for _ in range(WARM_UP + 1):
            await calls.run("m", 100, _call, clock, 0.0001)
        large = asyncio.create_task(calls.run("m", MAX_INLINE_BYTES + 1, gate.wait, 10))
        await asyncio.sleep(0)  # handed to the worker
        where = [await calls.run("m", 100, _call, clock, 0.01) for _ in range(3)]
        assert where == ["loop"] * 3
        gate.set()
        await large
        assert await calls.run("m", 100, _call, clock, 0.01) == "loop"
        assert await calls.run("m", 100, _call, clock, 0.0001) == "pool"
        for _ in range(PROBE_EVERY):  # back on the loop; then a call too long for GIL waits
            await calls.run("m", 100, _call, clock, 0.0001)
        gate.clear()
        large = asyncio.create_task(calls.run("m", MAX_INLINE_BYTES + 1, gate.wait, 10))
        await asyncio.sleep(0)
        assert await calls.run("m", 100, _call, clock, 0.1, 0.0) == "loop"
        assert await calls.run("m", 100, _call, clock, 0.0001) == "pool"
        gate.set()
        await large


async def test_large_requests_probes_and_a_zero_threshold_stay_in_the_pool() -> None:
    clock = Clock()
    with ThreadPoolExecutor(1) as pool:
        calls = InlineCalls(pool, threshold=0.001, clock=clock, thread_clock=clock.thread)
        for _ in range(WARM_UP):
            await calls.run("m", 100, _call, clock, 0.0001)
        assert await calls.run("m", MAX_INLINE_BYTES + 1, _call, clock, 0.0001) == "pool"
        where = [await calls.run("m", 100, _call, clock, 0.0001) for _ in range(2 * PROBE_EVERY)]
        assert 1 <= where.count("pool") <= 3  # one call in PROBE_EVERY is timed in the pool
        calls.forget("m")  # unloaded: a new copy starts over
        assert await calls.run("m", 100, _call, clock, 0.0001) == "pool"

        off = InlineCalls(pool, threshold=0.0, clock=clock, thread_clock=clock.thread)
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
        calls = InlineCalls(pool, threshold=0.001, clock=clock, thread_clock=clock.thread)
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
