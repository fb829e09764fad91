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
