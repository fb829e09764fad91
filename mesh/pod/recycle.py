"""Unloads that prove the memory came back, and the recycle of a runtime that keeps it.

After each unload (or demotion) from an accelerator, the pod measures the device's used memory
and compares what came back with what the model's load took there. Memory may come back late
(CUDA frees asynchronously, a caching allocator returns its blocks on `empty_cache`), so the
check polls for up to `settle` seconds. What did not come back is added to its runtime's account
of unreturned bytes; an unload that gives back more than its model took (an earlier model's
memory landing in its window) takes the excess off again, so measurement noise cancels instead
of adding up. Memory that comes back outside any unload's window is not credited: a runtime
that returns memory that late runs up its account, and is recycled as one that keeps it.
A runtime whose unreturned bytes
pass `bound` is recycled: the pod's runtimes all live in its process, so the pod drains (its
models are handed to other pods), exits and is replaced; `mesh_pod_recycles_total` counts it.

Only unloads that overlapped no other load or unload are judged, and only for models whose load
was measured on its own: otherwise the device's readings are not this model's alone. The host's
memory is never judged this way (its resident set moves with every request's buffers and with
the allocator's trimming; `tests/pod/test_process.py` bounds it over 200 cycles instead).

Runs in the cache's unload thread; `on_recycle` is called from there, once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from mesh.pod.devices import DeviceMemory

log = logging.getLogger(__name__)

# A return within this much of what the load took is a full return (allocator rounding).
_SLACK = 1 << 20
_POLL = 0.02


@dataclass(frozen=True, slots=True)
class UnloadCheck:
    """One judged unload."""

    runtime: str
    expected: int  # bytes the load took on the device
    returned: int  # bytes the device's used memory fell by
    unreturned: int  # the runtime's account after this unload


class UnloadAudit:
    """Checks each unload's return of device memory; recycles past `bound` unreturned bytes.

    >>> audit = UnloadAudit(device, bound=256 << 20, settle=2.0, on_recycle=pod.recycle)
    >>> before = audit.before()
    >>> ...  # close the model
    >>> audit.after("torch", expected=measured_bytes, before=before)
    """

    def __init__(
        self,
        memory: DeviceMemory,
        *,
        bound: int,
        settle: float,
        on_recycle: Callable[[str, int], None],
        on_check: Callable[[UnloadCheck], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.memory = memory
        self.bound = bound
        self.settle = settle
        self._on_recycle = on_recycle
        self._on_check = on_check
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self.unreturned: dict[str, int] = {}
        self.recycled: str | None = None  # the runtime that made the pod recycle, once

    def before(self) -> int | None:
        reading = self.memory.read()
        return None if reading is None else reading.used

    def after(
        self,
        runtime: str,
        expected: int,
        before: int,
        still_alone: Callable[[], bool] = lambda: True,
    ) -> UnloadCheck | None:
        """Poll until the device gave `expected` bytes back, or `settle` passed; then judge."""
        deadline = self._clock() + self.settle
        while True:
            reading = self.memory.read()
            if reading is None:
                return None
            returned = before - reading.used
            if returned >= expected - _SLACK or self._clock() >= deadline:
                break
            self._sleep(_POLL)
        if not still_alone():
            return None  # another load or unload moved the readings meanwhile
        with self._lock:
            account = max(self.unreturned.get(runtime, 0) + expected - returned, 0)
            self.unreturned[runtime] = account
            recycle = account > self.bound and self.recycled is None
            if recycle:
                self.recycled = runtime
        check = UnloadCheck(runtime, expected, returned, account)
        if self._on_check is not None:
            self._on_check(check)
        if expected - returned > _SLACK:
            log.warning(
                "runtime %s gave back %d of the %d device bytes its model took (%s); "
                "%d bytes unreturned so far",
                runtime,
                returned,
                expected,
                self.memory.name,
                account,
            )
        if recycle:
            log.error(
                "runtime %s has not given back %d bytes of %s (bound %d): recycling the pod",
                runtime,
                account,
                self.memory.name,
                self.bound,
            )
            self._on_recycle(runtime, account)
        return check
