"""Measure what the process holds and give freed memory back to the system.

RSS comes from /proc/self/statm (Linux); on other systems it reads as None and the pod falls
back to the framework's count or the estimate. After a model is unloaded, glibc's malloc_trim
returns freed heap pages that the allocator would otherwise keep for reuse: without it RSS never
shrinks after unloading, and a pod's idea of its free memory drifts from the kernel's.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
from functools import cache
from pathlib import Path

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int | None:
    try:
        fields = Path("/proc/self/statm").read_text().split()
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


def release_memory() -> None:
    """Collect garbage and hand free heap pages back to the kernel (glibc only)."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


class CudaMeter:
    """Device memory in use on one GPU, through torch when it is installed with CUDA."""

    def __init__(self, index: int) -> None:
        self._index = index

    def used_bytes(self) -> int | None:
        try:
            import torch
        except ImportError:
            return None
        if not torch.cuda.is_available():
            return None
        free, total = torch.cuda.mem_get_info(self._index)
        return int(total - free)
