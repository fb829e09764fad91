"""The model cache's load executor: loads in worker threads, at most `concurrency` at once, each
bounded by `timeout`.

A load that outlives its timeout fails with DeadlineExceeded; its thread cannot be stopped, so
its slot and its bytes stay charged (`orphaned`) until the thread ends, then are freed and the
model it made, if any, is handed to `on_orphan_done` to close.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from mesh.errors import DeadlineExceeded
from mesh.pod.sizing import Measured
from mesh.runtimes.base import LoadedModel, LoadRequest

Load = Callable[[LoadRequest], LoadedModel]


class LoadExecutor:
    def __init__(
        self,
        concurrency: int,
        timeout: float,
        measure: Callable[[Load, LoadRequest], Measured],
        on_orphan_done: Callable[[LoadedModel | None, int], None],
    ) -> None:
        self.timeout = timeout
        self._measure = measure
        self._on_orphan_done = on_orphan_done
        self.orphaned = 0  # bytes held by timed-out loads whose threads still run
        self._slots = asyncio.Semaphore(concurrency)
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="mesh-load")

    async def run(self, model_id: str, size: int, load: Load, request: LoadRequest) -> Measured:
        """Run `load(request)` in a worker thread, measured; `size` is what it is charged."""
        loop = asyncio.get_running_loop()
        await self._slots.acquire()
        future = loop.run_in_executor(self._pool, self._measure, load, request)
        try:
            # asyncio.wait neither cancels the load on a timeout or a cancelled caller (as a
            # shield would not) and wakes this task one loop turn sooner than wait_for(shield).
            done, _ = await asyncio.wait((future,), timeout=self.timeout)
        except BaseException:
            if future.done():
                self._slots.release()
            else:
                self._orphan(future, size)
            raise
        if not done:
            self._orphan(future, size)
            raise DeadlineExceeded(f"model {model_id!r} did not load within {self.timeout:g}s")
        self._slots.release()
        return future.result()

    def _orphan(self, future: asyncio.Future[Measured], size: int) -> None:
        """A load we stopped waiting for: free its slot and bytes when its thread ends."""
        self.orphaned += size

        def done(f: asyncio.Future[Measured]) -> None:
            self.orphaned -= size
            self._slots.release()
            model = f.result()[0] if not f.cancelled() and f.exception() is None else None
            self._on_orphan_done(model, size)

        future.add_done_callback(done)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
