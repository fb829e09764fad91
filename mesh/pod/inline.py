"""Short calls on the event loop, long ones in the worker pool: the hand-off where it pays.

A request handed to a worker thread pays for two thread switches (the loop queues the call,
a worker wakes, the worker wakes the loop through its self-pipe). For an XGBoost booster of
100 trees a predict of one row takes ~0.1 ms and the hand-off costs about as much again, and
more on a busy machine where each wake-up waits for a core: the profile of the pod at c=32
showed the loop and its workers trading the GIL and wake-ups more than predicting. So each
model's calls are timed where they run (an exponentially weighted mean of the call itself, not
the hand-off); while that mean stays under `threshold` and the request is small, the call runs
on the loop. The first calls of a model, and every `PROBE_EVERY`-th call after, go to the
pool, so that a model whose calls became long goes back there.

A call on the loop holds the loop for its duration (at most about `threshold`, plus one
outlier, which moves the mean and sends the next calls to the pool). `threshold` 0 turns
this off: every call goes to the pool. Cancellation: a call on the loop cannot be cancelled
half way; one in the pool keeps its caller waiting until it ends (mesh.pod.batching.in_worker).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from mesh.pod.batching import in_worker

T = TypeVar("T")

WARM_UP = 8  # calls of a model timed in the pool before any runs on the loop
PROBE_EVERY = 64  # then one call in this many still goes to the pool, timed there
MAX_INLINE_BYTES = 64 * 1024  # a larger request is decoded and encoded in the pool
_WEIGHT = 0.2  # of the newest call in the mean


class _Timing:
    __slots__ = ("calls", "mean")

    def __init__(self) -> None:
        self.calls = 0
        self.mean = 0.0

    def add(self, seconds: float) -> None:
        self.mean = seconds if self.calls == 0 else (1 - _WEIGHT) * self.mean + _WEIGHT * seconds
        self.calls += 1


class InlineCalls:
    """Runs a model's calls on the loop while they are short, else in `executor`.

    >>> calls = InlineCalls(pool, threshold=0.0005)
    >>> response = await calls.run("fraud", request.size, infer, model, request)
    """

    def __init__(
        self,
        executor: Executor,
        threshold: float,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._executor = executor
        self.threshold = threshold
        self._clock = clock
        self._timings: dict[str, _Timing] = {}

    def inline(self, model_id: str, size: int) -> bool:
        """Whether the next call of `model_id` with a request of `size` bytes runs on the loop."""
        timing = self._timings.get(model_id)
        if timing is None or self.threshold <= 0 or size > MAX_INLINE_BYTES:
            return False
        if timing.calls < WARM_UP or timing.calls % PROBE_EVERY == 0:
            return False
        return timing.mean < self.threshold

    async def run(self, model_id: str, size: int, fn: Callable[..., T], *args: Any) -> T:
        timing = self._timings.get(model_id)
        if timing is None:
            timing = self._timings[model_id] = _Timing()
        if self.inline(model_id, size):
            started = self._clock()
            try:
                return fn(*args)
            finally:
                timing.add(self._clock() - started)
        return await in_worker(self._executor, self._timed, timing, fn, *args)

    def _timed(self, timing: _Timing, fn: Callable[..., T], *args: Any) -> T:
        started = self._clock()
        try:
            return fn(*args)
        finally:
            timing.add(self._clock() - started)  # workers racing here only blur the mean

    def forget(self, model_id: str) -> None:
        """The model was unloaded: a new copy is timed anew."""
        self._timings.pop(model_id, None)
