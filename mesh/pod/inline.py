"""Short calls on the event loop, long ones in the worker pool: the hand-off where it pays.

A request handed to a worker thread pays for two thread switches (the loop queues the call,
a worker wakes, the worker wakes the loop through its self-pipe). For an XGBoost booster of
100 trees a predict of one row takes ~0.1 ms and the hand-off costs about as much again, and
more on a busy machine where each wake-up waits for a core: the profile of the pod at c=32
showed the loop and its workers trading the GIL and wake-ups more than predicting. So while a
model's calls are short and the request is small, the call runs on the loop.

"Short" is judged by two timings, each taken where it can be trusted:

- In the pool, the worker thread's own CPU time (`thread_clock`, time.thread_time): the
  candidate signal. The wall clock there is not the call's cost: a framework that releases the
  GIL inside waits to take it back while the busy loop runs Python, so a predict of ~0.1 ms
  reads 0.4-6 ms in the pool (bench/inline_gil.py), over the threshold, and a model once in the
  pool stayed there (the two states of the pod at c=32). Thread CPU time leaves out those waits
  (and waits for a core); it still reads a predict of 0.1 ms on the loop as ~0.3 ms in a
  worker (a cold cache, the GIL's hand-offs), under the 0.5 ms default.
- On the loop, the wall clock (`clock`, time.perf_counter): the confirmation. It is the loop's
  time that the call takes from every other request, and thread CPU time alone would call short
  what blocks without burning the caller's CPU (a CUDA sync, a library's own threads that the
  caller waits for: onnxruntime's intra-op pool, XGBoost with nthread > 1). A loop call is only
  judged by it when none of the model's own calls is in a worker, since the loop may otherwise
  have waited for that worker's GIL; with one in a worker, a loop call counts only if it took
  over `threshold` + `_GIL_WAITS` switch intervals (~20 ms by default), too long for that.

A model runs on the loop while the mean CPU time of its pool calls and the mean wall time of its
judged loop calls are both under `threshold` (exponentially weighted means). Until `WARM_UP`
calls have been timed in the pool no call runs on the loop, and one in `PROBE_EVERY` after still
goes there, which keeps the CPU mean current. A judged loop call long enough to lift the wall
mean over the threshold (one of 5x the threshold does) sends the model back to the pool; after
`PROBE_EVERY` calls there its calls are tried on the loop again until one is judged, and that
call's wall time alone is the new mean: short, the model stays on the loop (an outlier such as a
GC pause cost 64 hand-offs); long, it waits twice as many calls for the next try, up to
`PROBE_EVERY` << `MAX_BACKOFF`. So a model whose calls really block goes back to the pool after
its first judged call and then holds the loop about once per 1,024 calls: each try runs its
calls on the loop until the ones already in workers have ended (with a call that blocks without
the GIL, they end while it blocks) and one is judged.

A call on the loop holds the loop for its duration (at most about `threshold`, or one call that
became long). `threshold` 0 turns this off: every call goes to the pool. Cancellation: a call on
the loop cannot be cancelled half way; one in the pool keeps its caller waiting until it ends
(mesh.pod.batching.in_worker).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from mesh.pod.batching import in_worker

T = TypeVar("T")

WARM_UP = 8  # calls of a model timed in the pool before any runs on the loop
PROBE_EVERY = 64  # then one call in this many still goes to the pool, timed there
MAX_BACKOFF = 4  # a model whose loop tries stay long is tried at most PROBE_EVERY << 4 apart
MAX_INLINE_BYTES = 64 * 1024  # a larger request is decoded and encoded in the pool
_WEIGHT = 0.2  # of the newest call in a mean
_GIL_WAITS = 4  # switch intervals a loop call may wait for workers before it counts anyway


class _Timing:
    __slots__ = ("backoff", "calls", "cpu", "in_pool", "pooled", "retry_at", "wall", "walled")

    def __init__(self) -> None:
        self.calls = 0  # of the model, wherever they ran
        self.cpu = 0.0  # mean thread CPU time of the calls in the pool
        self.pooled = 0  # calls in that mean
        self.wall = 0.0  # mean wall time of the calls on the loop
        self.walled = 0  # calls in that mean
        self.retry_at = 0  # when the wall mean is over: the call that tries the loop again
        self.backoff = 0  # tries in a row that were long
        self.in_pool = 0  # calls handed to the executor and not yet back on the loop

    def add_cpu(self, seconds: float) -> None:
        self.cpu = seconds if self.pooled == 0 else (1 - _WEIGHT) * self.cpu + _WEIGHT * seconds
        self.pooled += 1


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
        thread_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        self._executor = executor
        self.threshold = threshold
        self._clock = clock
        self._thread_clock = thread_clock
        self._timings: dict[str, _Timing] = {}

    def inline(self, model_id: str, size: int) -> bool:
        """Whether the next call of `model_id` with a request of `size` bytes runs on the loop."""
        timing = self._timings.get(model_id)
        if timing is None or self.threshold <= 0 or size > MAX_INLINE_BYTES:
            return False
        if timing.pooled < WARM_UP or timing.calls % PROBE_EVERY == 0:
            return False
        if timing.cpu >= self.threshold:
            return False
        return timing.wall < self.threshold or timing.calls >= timing.retry_at

    async def run(self, model_id: str, size: int, fn: Callable[..., T], *args: Any) -> T:
        timing = self._timings.get(model_id)
        if timing is None:
            timing = self._timings[model_id] = _Timing()
        inline = self.inline(model_id, size)
        timing.calls += 1
        if inline:
            honest = timing.in_pool == 0  # none of its own calls to wait behind for the GIL
            started = self._clock()
            try:
                return fn(*args)
            finally:
                self._add_wall(timing, self._clock() - started, honest)
        timing.in_pool += 1
        try:
            return await in_worker(self._executor, self._timed, timing, fn, *args)
        finally:
            timing.in_pool -= 1

    def _add_wall(self, timing: _Timing, seconds: float, honest: bool) -> None:
        if not honest and seconds < self.threshold + _GIL_WAITS * sys.getswitchinterval():
            return  # maybe the workers' GIL, not the call's: judged by a later call
        retry = timing.wall >= self.threshold  # this call was a try after long ones
        if timing.walled == 0 or retry:
            timing.wall = seconds
        else:
            timing.wall = (1 - _WEIGHT) * timing.wall + _WEIGHT * seconds
        timing.walled += 1
        if timing.wall < self.threshold:
            timing.backoff = 0
            return
        timing.retry_at = timing.calls + (PROBE_EVERY << timing.backoff)
        timing.backoff = min(timing.backoff + 1, MAX_BACKOFF) if retry else 1

    def _timed(self, timing: _Timing, fn: Callable[..., T], *args: Any) -> T:
        started = self._thread_clock()
        try:
            return fn(*args)
        finally:
            # The worker's own CPU time: waits for the GIL are not the call's cost. Workers
            # racing here only blur the mean.
            timing.add_cpu(self._thread_clock() - started)

    def forget(self, model_id: str) -> None:
        """The model was unloaded: a new copy is timed anew."""
        self._timings.pop(model_id, None)
