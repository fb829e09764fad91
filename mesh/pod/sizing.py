"""The model cache's sizing and measurement: what a model is expected to take, and what a load
was measured to take.

- `SizeFactors`: a model's estimate is its file size times a per-format factor, the runtime's
  own at first, then learned from measured loads (an exponential average, the newest
  measurement weighing `FACTOR_WEIGHT`); never under `MIN_SIZE`.
- `Activities`: the loads and unloads running in worker threads; a measurement is kept only
  when no other overlapped it (they spoil each other's RSS delta).
- `measure_load`: run a load in a worker thread, with the meter's delta (the process RSS, or
  the device's memory on an accelerator, and the host's RSS beside it there).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from mesh.pod.cachetypes import ModelSource
from mesh.pod.memory import MemoryReleaser, rss_bytes
from mesh.runtimes.base import LoadedModel, LoadRequest
from mesh.runtimes.registry import RuntimeRegistry

log = logging.getLogger("mesh.pod.cache")

MIN_SIZE = 4096
FACTOR_WEIGHT = 0.3  # weight of the newest measurement in the learned per-format factor
# A load's result: the model, the device's delta, the host's delta (None: not measurable).
Measured = tuple[LoadedModel, int | None, int | None]


class SizeFactors:
    """Per-format size factors (bytes in memory per byte on disk), learned from loads."""

    def __init__(self, runtimes: RuntimeRegistry) -> None:
        self._runtimes = runtimes
        self._factors: dict[str, float] = {}

    def estimate(self, source: ModelSource, disk: int | None = None) -> int:
        """`disk`: the source's bytes on disk where the caller has them (else read here)."""
        runtime = self._runtimes.get(source.format)
        factor = self._factors.get(source.format, runtime.size_factor)
        disk = source.disk_bytes() if disk is None else disk
        return max(int(disk * factor), MIN_SIZE)

    def published(self) -> dict[str, float]:
        """The factors learned so far, to two significant digits (the instance record's
        `size_factors`: a factor drifting by a few percent does not rewrite the record)."""
        return {fmt: float(f"{factor:.2g}") for fmt, factor in sorted(self._factors.items())}

    def learn(self, source: ModelSource, measured: int, disk: int | None = None) -> None:
        disk = source.disk_bytes() if disk is None else disk
        if disk <= 0:
            return
        runtime = self._runtimes.get(source.format)
        old = self._factors.get(source.format, runtime.size_factor)
        ratio = max(measured, MIN_SIZE) / disk
        self._factors[source.format] = (1 - FACTOR_WEIGHT) * old + FACTOR_WEIGHT * ratio


class Activity:
    """A load or unload in a worker thread; overlapping ones spoil each other's RSS delta."""

    __slots__ = ("exclusive",)

    def __init__(self) -> None:
        self.exclusive = True


class Activities:
    """The loads and unloads running now, across the cache's worker threads."""

    def __init__(self) -> None:
        self._running: set[Activity] = set()
        self._lock = threading.Lock()

    def scope(self) -> ActivityScope:
        """`with activities.scope() as activity:` one load or unload; `activity.exclusive`
        says afterwards whether anything else ran meanwhile."""
        return ActivityScope(self._running, self._lock)


class ActivityScope:
    def __init__(self, activities: set[Activity], lock: threading.Lock) -> None:
        self._activities = activities
        self._lock = lock
        self._activity = Activity()

    def __enter__(self) -> Activity:
        with self._lock:
            if self._activities:
                self._activity.exclusive = False
                for other in self._activities:
                    other.exclusive = False
            self._activities.add(self._activity)
        return self._activity

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            self._activities.discard(self._activity)


def measure_load(
    load: Callable[[LoadRequest], LoadedModel],
    request: LoadRequest,
    *,
    activities: Activities,
    meter: Callable[[], int | None],
    releaser: MemoryReleaser,
    on_device: bool,
) -> Measured:
    """Run a load in this worker thread; the meter's delta, if nothing else overlapped."""
    host_meter = rss_bytes if on_device else None
    with activities.scope() as activity:
        releaser.before_load()
        host_before = host_meter() if host_meter is not None else None
        before = meter()
        model = load(request)
        releaser.after_load()
        after = meter()
        host_after = host_meter() if host_meter is not None else None
    if not activity.exclusive:
        return model, None, None
    host = None
    if host_before is not None and host_after is not None:
        host = max(host_after - host_before, 0)
    if before is None or after is None:
        return model, None, host
    return model, max(after - before, 0), host


def safe_hint(model: LoadedModel) -> int:
    """The framework's own count of the model's bytes; 0 if it has none (or fails)."""
    try:
        return model.size_hint() or 0
    except Exception:
        log.debug("size_hint failed", exc_info=True)
        return 0
