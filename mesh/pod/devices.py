"""Memory per device: what a pod's device (a GPU, or the host) holds, measured, not believed.

One small interface, `DeviceMemory.read()` -> `MemoryReading(device, total, used)`, behind which
sit every source the pod can ask:

- `NvmlMemory`: an NVIDIA GPU through NVML (`nvidia-ml-py`, the `mesh[gpu]` extra): the
  device's own count, which includes every process's allocations and every framework's
  (torch's caching allocator, onnxruntime's CUDA arena, XGBoost's), so it is what the unload
  check trusts.
- `TorchCudaMemory`: the same device through `torch.cuda.mem_get_info`, for a pod without NVML.
  onnxruntime has no Python API that reports its CUDA arena's bytes, so an ONNX-only GPU pod
  without NVML measures nothing and falls back to estimates.
- `HostMemory`: the host: total is the container's memory limit (else the machine's), used is
  this process's resident set (the pod is its container's process).
- `FakeDevice`: a device in memory for tests, which fake runtimes allocate on. It passes the
  same contract tests as the others (tests/pod/test_devices.py).

`read()` returns None when the source cannot answer (the driver went away, a device index that
does not exist); callers then fall back to estimates. It never raises.

>>> fake = FakeDevice(total=1 << 30)
>>> fake.allocate(1 << 20)
>>> fake.read().used
1048576
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mesh.errors import CapacityExhausted
from mesh.pod.memory import rss_bytes
from mesh.runtimes.base import Device

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MemoryReading:
    """One measurement of one device, in bytes."""

    device: str
    total: int
    used: int

    @property
    def free(self) -> int:
        return max(self.total - self.used, 0)


class DeviceMemory(Protocol):
    """A source of memory readings for one device."""

    # "cuda:0", "host", "fake:0": the `device` label of the pod's memory metrics.
    name: str
    # "device" for an accelerator (or its fake), "host" for the host's memory: which tier the
    # readings describe, and whether the unload check applies (it does not to the host, whose
    # resident set moves with every request's buffers).
    tier: str

    def read(self) -> MemoryReading | None: ...


class HostMemory:
    """The host: the container's limit (else the machine's memory) and this process's RSS."""

    tier = "host"

    def __init__(
        self, total: int | None = None, cgroup_root: Path = Path("/sys/fs/cgroup")
    ) -> None:
        from mesh.pod.capacity import cgroup_memory_limit, host_memory

        self.name = "host"
        self._total = total or cgroup_memory_limit(cgroup_root) or host_memory()

    def read(self) -> MemoryReading | None:
        used = rss_bytes()
        if used is None:
            return None
        return MemoryReading(self.name, self._total, used)


class NvmlMemory:
    """An NVIDIA GPU through NVML. `available()` says whether NVML sees a device at all."""

    tier = "device"

    def __init__(self, index: int) -> None:
        import pynvml

        self._nvml = pynvml
        self.name = f"cuda:{index}"
        pynvml.nvmlInit()
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)

    @staticmethod
    def available(index: int = 0) -> str | None:
        """None when NVML can measure device `index`; otherwise why not, in words."""
        try:
            import pynvml
        except ImportError:
            return "nvidia-ml-py is not installed (pip install 'mesh[gpu]')"
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as exc:
            return f"no NVIDIA device: NVML says {exc}"
        if index >= count:
            return f"no NVIDIA device {index}: NVML sees {count}"
        return None

    def read(self) -> MemoryReading | None:
        try:
            info = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
        except self._nvml.NVMLError as exc:
            log.warning("NVML could not read %s: %s", self.name, exc)
            return None
        return MemoryReading(self.name, int(info.total), int(info.used))


class TorchCudaMemory:
    """A GPU as torch's CUDA runtime sees it (`mem_get_info`: free and total of the device)."""

    tier = "device"

    def __init__(self, index: int) -> None:
        self._index = index
        self.name = f"cuda:{index}"

    def read(self) -> MemoryReading | None:
        try:
            import torch

            if not torch.cuda.is_available():
                return None
            free, total = torch.cuda.mem_get_info(self._index)
        except Exception as exc:  # a driver error, an index that does not exist
            log.warning("torch could not read %s: %s", self.name, exc)
            return None
        return MemoryReading(self.name, int(total), int(total - free))


class FakeDevice:
    """A device in memory: fake runtimes allocate on it, and may leak on purpose.

    Allocating past `total` raises CapacityExhausted, as a CUDA out-of-memory would fail a load.
    Thread-safe: loads and unloads run in worker threads.
    """

    tier = "device"

    def __init__(self, total: int, name: str = "fake:0", baseline: int = 0) -> None:
        self.name = name
        self.total = total
        self._used = baseline
        self._lock = threading.Lock()
        self.broken = False  # reads as None, as a driver that went away

    def allocate(self, nbytes: int) -> None:
        with self._lock:
            if self._used + nbytes > self.total:
                raise CapacityExhausted(
                    f"{self.name}: out of memory allocating {nbytes} bytes "
                    f"({self._used} of {self.total} in use)"
                )
            self._used += nbytes

    def free(self, nbytes: int) -> None:
        with self._lock:
            self._used = max(self._used - nbytes, 0)

    def read(self) -> MemoryReading | None:
        if self.broken:
            return None
        with self._lock:
            return MemoryReading(self.name, self.total, self._used)


def device_memory_for(device: Device) -> DeviceMemory:
    """The best source for the pod's device: NVML, else torch, for a GPU; the host otherwise."""
    if device.is_cuda:
        why_not = NvmlMemory.available(device.index)
        if why_not is None:
            return NvmlMemory(device.index)
        log.info("device memory of %s through torch: %s", device, why_not)
        return TorchCudaMemory(device.index)
    return HostMemory()


def used_meter(memory: DeviceMemory) -> Callable[[], int | None]:
    """A meter (a callable returning used bytes or None) over a device's readings."""

    def meter() -> int | None:
        reading = memory.read()
        return None if reading is None else reading.used

    return meter
