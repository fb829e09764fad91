"""One contract for every source of device memory: the fake, the host, NVML and torch's CUDA.

The NVML and torch sources need an NVIDIA GPU: where none is, their cases are skipped, and the
skip says "no NVIDIA device" and nothing else. A missing library is a failure, not a skip.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from mesh.errors import CapacityExhausted
from mesh.pod.devices import (
    DeviceMemory,
    FakeDevice,
    HostMemory,
    NvmlMemory,
    TorchCudaMemory,
    device_memory_for,
)
from mesh.runtimes.base import Device
from tests.helpers import wait_until

MIB = 2**20
# Allocate n bytes on the device under test; the function given back frees them.
Allocate = Callable[[int], Callable[[], None]]


def _no_nvidia_device(why: str) -> None:
    assert why.startswith("no NVIDIA device"), f"NVML unusable for another reason: {why}"
    pytest.skip(why)


def _cuda_allocator() -> Allocate:
    """Device memory through torch where it has CUDA, else the CUDA driver API itself."""
    try:
        import torch

        if torch.cuda.is_available():

            def with_torch(n: int) -> Callable[[], None]:
                held = [torch.empty(n, dtype=torch.uint8, device="cuda:0")]
                torch.cuda.synchronize()

                def free() -> None:
                    held.clear()
                    torch.cuda.empty_cache()

                return free

            return with_torch
    except ImportError:
        pass
    cuda = ctypes.CDLL("libcuda.so.1")  # ships with the NVIDIA driver
    assert cuda.cuInit(0) == 0
    dev, ctx = ctypes.c_int(), ctypes.c_void_p()
    assert cuda.cuDeviceGet(ctypes.byref(dev), 0) == 0
    assert cuda.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev) == 0

    def with_driver(n: int) -> Callable[[], None]:
        ptr = ctypes.c_uint64()
        assert cuda.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(n)) == 0
        return lambda: cuda.cuMemFree_v2(ptr)

    return with_driver


@pytest.fixture(params=["fake", "host", "nvml", "torch-cuda"])
def device(request: pytest.FixtureRequest) -> Iterator[tuple[DeviceMemory, Allocate]]:
    kind = request.param
    if kind == "fake":
        fake = FakeDevice(total=1 << 30, baseline=5 * MIB)

        def on_fake(n: int) -> Callable[[], None]:
            fake.allocate(n)
            return lambda: fake.free(n)

        yield fake, on_fake
    elif kind == "host":

        def on_host(n: int) -> Callable[[], None]:
            held: list[Any] = [np.ones(n // 8, np.float64)]  # written, so resident
            return held.clear

        yield HostMemory(), on_host
    elif kind == "nvml":
        why = NvmlMemory.available(0)
        if why is not None:
            _no_nvidia_device(why)
        yield NvmlMemory(0), _cuda_allocator()
    else:
        try:
            import torch
        except ImportError:
            pytest.fail("torch is a test dependency")
        if not torch.cuda.is_available():
            pytest.skip("no NVIDIA device: torch sees no CUDA device")
        yield TorchCudaMemory(0), _cuda_allocator()


def test_a_reading_is_consistent(device: tuple[DeviceMemory, Allocate]) -> None:
    memory, _ = device
    reading = memory.read()
    assert reading is not None
    assert reading.device == memory.name
    assert memory.tier in ("device", "host")
    assert reading.total > 0
    assert 0 <= reading.used <= reading.total
    assert reading.free == reading.total - reading.used


def test_an_allocation_shows_and_comes_back_when_freed(
    device: tuple[DeviceMemory, Allocate],
) -> None:
    memory, allocate = device

    def used() -> int:
        reading = memory.read()
        assert reading is not None
        return reading.used

    before = used()
    free = allocate(64 * MIB)
    assert used() - before >= 60 * MIB
    free()
    wait_until(lambda: used() - before <= 8 * MIB, timeout=10, what="the memory back")


def test_the_fake_refuses_what_it_has_not_got_and_can_stop_answering() -> None:
    fake = FakeDevice(total=10 * MIB)
    fake.allocate(8 * MIB)
    with pytest.raises(CapacityExhausted, match="out of memory"):
        fake.allocate(4 * MIB)
    assert fake.read() is not None and fake.read().used == 8 * MIB  # type: ignore[union-attr]
    fake.broken = True
    assert fake.read() is None


def test_a_cpu_pod_measures_the_host_and_a_gpu_pod_without_one_reads_nothing() -> None:
    assert isinstance(device_memory_for(Device()), HostMemory)
    gpu = device_memory_for(Device("cuda", 7))
    assert gpu.tier == "device"
    if NvmlMemory.available(7) is not None:
        # No such GPU here: the source says so by reading None, and never raises.
        assert gpu.read() is None
