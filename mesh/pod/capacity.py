"""How many bytes of models the pod may hold, and which device it runs on.

Capacity, unless set: on a GPU pod the device's memory, else the container's memory limit as
the Kubernetes downward API gives it (`memory_limit`, from `resourceFieldRef: limits.memory`),
else the cgroup's (v2 `memory.max`, or v1 `memory.limit_in_bytes`), else the machine's memory;
less a reserve for the process itself and the requests in flight. The downward API comes first
because a cgroup read inside some runtimes shows the node's limit, not the container's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection
from pathlib import Path

from mesh.runtimes.base import Device

log = logging.getLogger(__name__)

_NO_LIMIT = 1 << 60  # cgroup v1 reports "no limit" as a huge number


def cgroup_memory_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    for path in (root / "memory.max", root / "memory" / "memory.limit_in_bytes"):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            value = int(text)
        except ValueError:
            continue
        return value if value < _NO_LIMIT else None
    return None


def host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def gpu_memory(index: int) -> int | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available() or index >= torch.cuda.device_count():
        return None
    return int(torch.cuda.get_device_properties(index).total_memory)


def cuda_available(index: int, runtimes: Collection[str]) -> bool:
    """Whether a GPU is usable, asking only the frameworks of the pod's runtimes.

    Importing torch just to look for a GPU would cost an ONNX-only pod some 250 MB.
    """
    if "torch" in runtimes:
        try:
            import torch

            if torch.cuda.is_available() and index < torch.cuda.device_count():
                return True
        except ImportError:
            pass
    if "onnx" in runtimes:
        try:
            import onnxruntime

            return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        except ImportError:
            return False
    return False


def choose_device(
    setting: str, index: int, runtimes: Collection[str] = ("torch", "onnx")
) -> Device:
    if setting == "cpu":
        return Device()
    if setting == "cuda" or cuda_available(index, runtimes):
        return Device("cuda", index)
    return Device()


def default_capacity(
    device: Device,
    reserve: int,
    cgroup_root: Path = Path("/sys/fs/cgroup"),
    memory_limit: int | None = None,
    host_tier: int = 0,
) -> int:
    """`host_tier`: bytes of host memory the host tier takes; on a CPU-only pod both tiers
    share the host's memory, so the device tier's default leaves them out."""
    total: int | None = None
    source = ""
    if device.is_cuda:
        total, source = gpu_memory(device.index), f"{device} memory"
    if total is None and memory_limit:
        total, source = memory_limit, "container memory limit (downward API)"
    if total is None:
        total, source = cgroup_memory_limit(cgroup_root), "cgroup memory limit"
    if total is None:
        total, source = host_memory(), "host memory"
    shared = 0 if device.is_cuda else host_tier
    capacity = max(total - reserve - shared, total // 10)
    log.info(
        "capacity %d bytes: %s %d less reserve %d%s",
        capacity,
        source,
        total,
        reserve,
        f" and host tier {shared}" if shared else "",
    )
    return capacity
