"""Measure what the process holds and give freed memory back to the system.

RSS comes from /proc/self/statm (Linux); on other systems it reads as None and the pod falls
back to the framework's count or the estimate. After a model is unloaded, glibc's malloc_trim
returns freed heap pages that the allocator would otherwise keep for reuse: without it RSS never
shrinks after unloading, and a pod's idea of its free memory drifts from the kernel's.

The pod freezes the objects alive after its start-up (gc.freeze), so the collection run on
each unload looks only at what models created: with torch imported a full collection walks
~320,000 objects and took 166 ms here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import threading
from collections.abc import Callable
from functools import cache

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


_statm: tuple[int, int] | None = None  # (process id, descriptor of its /proc/self/statm)
_statm_lock = threading.Lock()


def _statm_fd() -> int | None:
    """A descriptor of /proc/self/statm kept open: each load reads it twice, and a positional
    read of an open file costs a tenth of opening it anew (1.6 against 14 us here). Opened
    again in a forked child, whose "self" is another process."""
    global _statm
    pid = os.getpid()
    held = _statm
    if held is not None and held[0] == pid:
        return held[1]
    with _statm_lock:
        if _statm is None or _statm[0] != pid:
            try:
                _statm = (pid, os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                return None
        return _statm[1]


def rss_bytes() -> int | None:
    fd = _statm_fd()
    if fd is None:
        return None
    try:
        fields = os.pread(fd, 256, 0).split()
    except OSError:
        return None
    return int(fields[1]) * _PAGE


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


def trim_heap() -> None:
    """Hand free heap pages back to the kernel (glibc only; elsewhere a no-op)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


# glibc's mallopt parameters, and the values the pod pins them to.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 4 * 2**20  # blocks this large get pages of their own, unmapped when freed
TRIM_THRESHOLD = 8 * 2**20  # a heap's free top larger than this goes back when freed


def pin_malloc_thresholds() -> bool:
    """Pin glibc's mmap and trim thresholds (glibc only; elsewhere a no-op); whether it could.

    glibc raises its mmap threshold whenever a large mapped block is freed (up to 32 MiB), and
    its trim threshold with it (to 64 MiB). A load's large temporaries (torch's copies of a
    file's bytes) then come from a heap, and freed at the top of a worker thread's arena they
    stay resident, where malloc_trim does not reach (it trims the main arena's top only): the
    RSS delta charged them to the model, and a 17 MB TorchScript promoted from bytes measured
    50 MB. Pinned, a tensor or temporary of 4 MiB or more is mapped alone and unmapped when
    freed, so a load is measured at what it kept and an unload's bytes go back at once; the
    price is a page fault per page of each such block (requests' large buffers too).
    """
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


class MemoryReleaser:
    """After each unload: collect garbage; once enough bytes were freed, trim the heap.

    Trimming after every unload would make the next load fault all its pages back in (a 34 MB
    model loaded in 72 ms instead of 34 ms here), so the heap is trimmed once `trim_after`
    bytes have been freed since the last trim: RSS still comes back, in steps.

    A trim runs under the releaser's lock, so that a load waiting in `before_load` starts
    measuring only once a trim under way has ended.
    """

    def __init__(self, trim_after: int = 32 * 2**20, trim: Callable[[], None] = trim_heap) -> None:
        self._trim_after = trim_after
        self._trim = trim
        self._pending = 0
        self._lock = threading.Lock()

    def before_load(self) -> None:
        """Trim whatever was freed since the last trim, so that a load's RSS delta is its own.

        Without it a load reuses freed heap and measures a few KiB: under churn the pod then
        charged a quarter of what models really cost and overfilled its capacity; and the trim
        after the load (`after_load`) would give back, against the load's delta, what others
        freed before it. The price is the page faults of a cold heap on the next load.
        """
        self.trim_pending()

    def trim_pending(self) -> None:
        """Trim the heap now (and forget what `release` counted).

        The pod calls it in its unload thread once an unload has answered, so that what the
        unload freed goes back to the system without waiting for a load; a load trims again
        before it measures (`before_load`), since requests and other threads free memory too.
        """
        with self._lock:
            self._pending = 0
            self._trim()

    def after_load(self) -> None:
        """Trim what the load itself freed, before its RSS is read again: a deserialiser's
        temporaries (torch's copies of a file's bytes, one per tensor record) stay resident in
        glibc's heap after they are freed, and the model would be charged them too. Which heap
        they land in depends on the threads' arenas, so on a busy machine a 34 MB TorchScript
        promoted from bytes measured 67 MB, more than a 64 MB pod, and its promotion failed."""
        trim_heap()

    def release(self, freed_bytes: int) -> None:
        gc.collect()
        with self._lock:
            self._pending += freed_bytes
            if self._pending < self._trim_after:
                return
            self._pending = 0
            self._trim()
