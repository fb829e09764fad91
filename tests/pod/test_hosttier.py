"""The host tier and the unload check, in the cache, on a FakeDevice and on the host.

Demotion, promotion, per-tier eviction and the recycle rule, with fake runtimes whose memory is
a FakeDevice (the device contract's fake, tests/pod/test_devices.py).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from mesh.pod.cache import ModelCache
from mesh.pod.devices import FakeDevice, used_meter
from mesh.pod.hosttier import Demoted, HostTier, SerializedCopy
from mesh.pod.memory import MemoryReleaser
from mesh.pod.recycle import UnloadAudit
from mesh.runtimes.registry import RuntimeRegistry
from tests.fakes import DeviceRuntime, FakeRuntime, device_source, fake_source

MB = 1_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1.0  # every look at the clock is a later moment: a strict LRU order
        return self.now


@pytest.fixture
def device() -> FakeDevice:
    return FakeDevice(total=100 * MB)


def gpu_cache(
    device: FakeDevice,
    runtime: DeviceRuntime,
    *,
    capacity: int = 30 * MB,
    host: int = 25 * MB,
    audit: UnloadAudit | None = None,
) -> ModelCache:
    return ModelCache(
        capacity=capacity,
        runtimes=RuntimeRegistry([runtime]),
        meter=used_meter(device),
        clock=Clock(),
        host_tier=HostTier(host) if host else None,
        audit=audit,
        on_device=True,
    )


async def test_an_evicted_model_is_demoted_and_promoted_without_its_file(
    device: FakeDevice, tmp_path: Path
) -> None:
    runtime = DeviceRuntime(device)
    cache = gpu_cache(device, runtime)
    sources = {m: device_source(tmp_path, m, 10 * MB) for m in "abc"}
    for m in "abc":
        await cache.load(sources[m])
    assert device.read().used == 30 * MB  # type: ignore[union-attr]
    outcome = await cache.load(device_source(tmp_path, "d", 10 * MB))
    assert outcome.evicted == ("a",)
    assert runtime.demoted == 1 and runtime.closed == 0  # moved, not closed
    assert device.read().used == 30 * MB  # type: ignore[union-attr]  # a's bytes left the device
    view = cache.view()
    assert [d.model_id for d in view.demoted] == ["a"]
    assert view.host_used == 10 * MB and view.host_capacity == 25 * MB
    assert not cache.is_loaded("a")

    sources["a"].file.unlink()  # no disk: the promotion must not need the file
    promoted = await cache.load(sources["a"])
    assert promoted.promoted and not promoted.already_loaded
    assert runtime.restored == ["a"]
    assert runtime.loads.count("a") == 1  # loaded once, promoted once
    assert cache.is_loaded("a")
    assert promoted.evicted == ("b",)  # the least recently used went down in its turn
    assert [d.model_id for d in cache.view().demoted] == ["b"]
    entry = cache.acquire("a")
    assert entry is not None and entry.model is not None
    cache.release(entry)


async def test_the_host_tier_lets_its_least_recently_used_go_for_room(
    device: FakeDevice, tmp_path: Path
) -> None:
    runtime = DeviceRuntime(device)
    cache = gpu_cache(device, runtime, capacity=10 * MB, host=25 * MB)
    for m in "abcd":  # each load evicts the one before it into the host tier
        await cache.load(device_source(tmp_path, m, 10 * MB))
    assert [d.model_id for d in cache.view().demoted] == ["c", "b"]  # a let go for c
    assert runtime.copies_closed == 1
    assert cache.view().host_used == 20 * MB
    # A copy larger than the whole tier is not kept: that model is evicted as before.
    small = gpu_cache(device, DeviceRuntime(device), capacity=10 * MB, host=5 * MB)
    await small.load(device_source(tmp_path, "x", 10 * MB))
    await small.load(device_source(tmp_path, "y", 10 * MB))
    assert small.view().demoted == ()


async def test_an_explicit_unload_drops_the_model_from_both_tiers(
    device: FakeDevice, tmp_path: Path
) -> None:
    runtime = DeviceRuntime(device)
    cache = gpu_cache(device, runtime, capacity=10 * MB)
    await cache.load(device_source(tmp_path, "a", 10 * MB))
    await cache.load(device_source(tmp_path, "b", 10 * MB))
    assert [d.model_id for d in cache.view().demoted] == ["a"]
    assert await cache.unload("a") is None  # not loaded, but no longer kept either
    assert cache.view().demoted == () and cache.view().host_used == 0
    assert runtime.copies_closed == 1
    await cache.load(device_source(tmp_path, "a", 10 * MB))
    assert runtime.restored == []  # a fresh load
    assert runtime.loads.count("a") == 2


async def test_on_the_host_a_demotion_keeps_the_files_bytes_and_promotes_from_them(
    tmp_path: Path,
) -> None:
    device = FakeDevice(total=100 * MB)
    runtime = DeviceRuntime(device)
    cache = ModelCache(
        capacity=10 * MB,
        runtimes=RuntimeRegistry([runtime]),
        meter=used_meter(device),
        clock=Clock(),
        host_tier=HostTier(MB),
        on_device=False,  # a CPU-only pod: models do not demote themselves
    )
    a = device_source(tmp_path, "a", 10 * MB)
    await cache.load(a)
    await cache.load(device_source(tmp_path, "b", 10 * MB))
    assert runtime.demoted == 0 and runtime.closed == 1  # closed; its file's bytes kept
    await cache.demotions_read()  # read after the eviction
    (held,) = cache.view().demoted
    assert held.host_bytes == a.file.stat().st_size and not held.moved
    a.file.unlink()
    outcome = await cache.load(a)
    assert outcome.promoted
    assert runtime.from_bytes == ["a"]  # a deserialisation from memory, not a file read


async def test_a_model_leaves_the_pod_only_when_it_is_in_neither_tier(tmp_path: Path) -> None:
    """What the data plane releases to the puller: never at a demotion (the next demotion after a
    promotion reads the file again), but when the host tier lets the copy go, on an unload, and
    when a promotion fails."""
    device = FakeDevice(total=100 * MB)
    runtime = DeviceRuntime(device)
    cache = ModelCache(
        capacity=10 * MB,  # one model on the device
        runtimes=RuntimeRegistry([runtime]),
        meter=used_meter(device),
        clock=Clock(),
        host_tier=HostTier(40),  # two files' bytes (16 each)
        on_device=False,
    )
    left: list[str] = []
    cache.on_left(left.append)
    sources = {m: device_source(tmp_path, m, 10 * MB) for m in "abcd"}

    async def load(model_id: str) -> None:
        await cache.load(sources[model_id])
        await cache.demotions_read()  # the evicted model's file read into the tier

    await load("a")
    await load("b")  # a demoted
    await load("a")  # promoted; b demoted
    await load("b")  # promoted; a demoted again
    await load("c")  # b demoted
    assert left == [] and [d.model_id for d in cache.view().demoted] == ["b", "a"]
    await load("d")  # c demoted: the tier lets a go
    assert left == ["a"]
    await cache.unload("b")  # in the host tier only
    await cache.unload("d")  # loaded
    assert left == ["a", "b", "d"]
    device.allocate(95 * MB)  # c's promotion fails on the device: c has left too
    with pytest.raises(Exception, match="out of memory"):
        await cache.load(sources["c"])
    assert left == ["a", "b", "d", "c"] and cache.view().demoted == ()


async def test_a_load_waiting_for_room_does_not_wait_for_the_evicted_files_read(
    tmp_path: Path,
) -> None:
    """On a device tier a demotion to file bytes (an ONNX session) reads the file after the
    eviction: the load that needed the room goes on at once. The evicted model's file is a
    FIFO here, so that its read blocks until the test writes the bytes (a large file on a slow
    disk)."""
    import os
    import threading

    device = FakeDevice(total=100 * MB)
    runtime = DeviceRuntime(device, demotable=False)  # keeps its file's bytes, as ONNX does
    cache = gpu_cache(device, runtime, capacity=10 * MB, host=MB)
    a = device_source(tmp_path, "a", 10 * MB)
    await cache.load(a)
    a.file.unlink()
    os.mkfifo(a.file)  # the loaded model's file, now one whose read waits for a writer
    written = threading.Event()

    def write() -> None:
        with open(a.file, "wb") as fifo:
            fifo.write(b"weights of a")
        written.set()

    try:
        # Bounded: before the fix this load waited for the read, which waits for the writer.
        outcome = await asyncio.wait_for(cache.load(device_source(tmp_path, "b", 10 * MB)), 30)
        assert outcome.evicted == ("a",) and cache.is_loaded("b")
        assert cache.view().demoted == () and not written.is_set()  # a's file not read yet
    finally:
        threading.Thread(target=write, daemon=True).start()
    await cache.demotions_read()
    (held,) = cache.view().demoted
    assert held.model_id == "a" and held.host_bytes == len(b"weights of a")
    await cache.aclose()


def test_a_file_larger_than_the_host_tier_is_not_read(tmp_path: Path) -> None:
    from mesh.pod.hosttier import file_copy

    source = device_source(tmp_path, "a", MB)  # a 16-byte file
    runtime = DeviceRuntime(FakeDevice(total=MB))
    assert file_copy(runtime, source, limit=15) is None
    copy = file_copy(runtime, source, limit=16)
    assert copy is not None and copy.data == source.file.read_bytes()


async def test_a_runtime_that_cannot_load_bytes_is_evicted_as_before(tmp_path: Path) -> None:
    runtime = FakeRuntime()  # neither demotes itself nor accepts bytes
    cache = ModelCache(
        capacity=20_000,
        runtimes=RuntimeRegistry([runtime]),
        meter=runtime.memory.read,
        clock=Clock(),
        host_tier=HostTier(MB),
    )
    await cache.load(fake_source(tmp_path, "a", 15_000))
    await cache.load(fake_source(tmp_path, "b", 15_000))
    assert cache.view().demoted == ()
    assert runtime.closed == 1


def test_the_tier_keeps_last_use_order_whatever_the_demotion_order(tmp_path: Path) -> None:
    tier = HostTier(30)
    runtime = DeviceRuntime(FakeDevice(total=10))

    def held(model_id: str, last_used: float) -> Demoted:
        return Demoted(
            device_source(tmp_path, model_id, 1), SerializedCopy(runtime, b"x" * 10), 1, last_used
        )

    tier.put(held("new", 50.0))
    tier.put(held("old", 10.0))  # demoted later, used earlier
    tier.put(held("mid", 30.0))
    assert tier.put(held("next", 60.0)) == ("old",)
    assert [v.model_id for v in tier.views()] == ["next", "new", "mid"]
    assert tier.take("mid") is not None and not tier.holds("mid") and tier.used == 20


# -- the unload check --------------------------------------------------------------------------


def audit_for(device: FakeDevice, recycled: list[tuple[str, int]]) -> UnloadAudit:
    return UnloadAudit(
        device,
        bound=5 * MB,
        settle=0.2,
        on_recycle=lambda runtime, unreturned: recycled.append((runtime, unreturned)),
    )


async def test_a_runtime_that_keeps_device_memory_is_recycled_once_past_the_bound(
    device: FakeDevice, tmp_path: Path
) -> None:
    recycled: list[tuple[str, int]] = []
    audit = audit_for(device, recycled)
    cache = gpu_cache(device, DeviceRuntime(device), audit=audit, host=0)
    leaky = device_source(tmp_path, "leaky", 10 * MB, leak=2 * MB)
    for _ in range(2):
        await cache.load(leaky)
        await cache.unload("leaky")
    assert recycled == []  # 4 MB unreturned: within the bound
    assert audit.unreturned == {"fakegpu": 4 * MB}
    await cache.load(leaky)
    await cache.unload("leaky")
    assert recycled == [("fakegpu", 6 * MB)]
    await cache.load(leaky)
    await cache.unload("leaky")
    assert len(recycled) == 1  # once


class TrimDuringNextLoad(MemoryReleaser):
    """A releaser whose first trim in the unload thread (the one after an unload) lasts until
    the next load has begun: the trim and that load overlap, every time."""

    def __init__(self) -> None:
        super().__init__(trim=self._trim_heap)
        self._load_began = threading.Event()
        self._held = False

    def before_load(self) -> None:
        self._load_began.set()
        super().before_load()

    def release(self, freed_bytes: int) -> None:
        self._load_began.clear()
        super().release(freed_bytes)

    def _trim_heap(self) -> None:
        if threading.current_thread().name.startswith("mesh-unload") and not self._held:
            self._held = True
            assert self._load_began.wait(timeout=10)


async def test_a_host_trim_beside_the_next_load_leaves_that_load_audited_on_a_device(
    device: FakeDevice, tmp_path: Path
) -> None:
    # The host heap's trim after an unload cannot move the device's meter: the load it overlaps
    # is still measured there, and so its unload is still judged (CI once saw 2 MB instead of 4).
    audit = audit_for(device, [])
    cache = ModelCache(
        capacity=30 * MB,
        runtimes=RuntimeRegistry([DeviceRuntime(device)]),
        meter=used_meter(device),
        clock=Clock(),
        releaser=TrimDuringNextLoad(),
        audit=audit,
        on_device=True,
    )
    leaky = device_source(tmp_path, "leaky", 10 * MB, leak=2 * MB)
    for _ in range(2):
        await cache.load(leaky)
        await cache.unload("leaky")
    assert audit.unreturned == {"fakegpu": 4 * MB}


async def test_models_that_give_their_memory_back_never_recycle_and_late_returns_count(
    device: FakeDevice, tmp_path: Path
) -> None:
    recycled: list[tuple[str, int]] = []
    audit = audit_for(device, recycled)
    cache = gpu_cache(device, DeviceRuntime(device), audit=audit, host=0)
    for i in range(20):
        await cache.load(device_source(tmp_path, f"m{i}", 10 * MB))
        await cache.unload(f"m{i}")
    assert recycled == [] and audit.unreturned == {"fakegpu": 0}
    # Memory that comes back a moment after the close (CUDA frees asynchronously) is waited
    # for, up to the settle time, and counts as given back.
    for i in range(3):
        await cache.load(device_source(tmp_path, f"late{i}", 10 * MB, late=0.05))
        await cache.unload(f"late{i}")
    assert recycled == [] and audit.unreturned == {"fakegpu": 0}


async def test_a_demotion_is_checked_like_an_unload(device: FakeDevice, tmp_path: Path) -> None:
    recycled: list[tuple[str, int]] = []
    audit = audit_for(device, recycled)
    cache = gpu_cache(device, DeviceRuntime(device), capacity=10 * MB, audit=audit)
    await cache.load(device_source(tmp_path, "a", 10 * MB, leak=6 * MB))
    await cache.load(device_source(tmp_path, "b", 4 * MB))  # a demoted, keeping 6 MB
    assert recycled == [("fakegpu", 6 * MB)]


# -- the runtimes' own demotion (the GPU path's logic, run on the CPU) ---------------------------


@pytest.mark.parametrize("kind", ["torchscript", "export", "xgboost"])
async def test_real_models_demote_themselves_and_predict_the_same_once_promoted(
    kind: str, tmp_path: Path
) -> None:
    """On a GPU the torch module moves to the CPU and the booster to device=cpu; here the same
    code runs with the CPU as the device: the promoted model must answer as before."""
    import numpy as np

    from mesh import examples
    from mesh.pod.repository import source_for

    registry = RuntimeRegistry.discover(["torch", "xgboost"])
    made = {
        "torchscript": lambda: examples.torchscript_mlp(tmp_path / "m"),
        "export": lambda: examples.torch_export_mlp(tmp_path / "m"),
        "xgboost": lambda: examples.xgboost_booster(tmp_path / "m", n_trees=5),
    }[kind]()
    source = source_for("m", made, registry)
    filler = source_for("filler", made, registry)
    cache = ModelCache(
        capacity=1,  # overwritten below, once a copy's size is known
        runtimes=registry,
        meter=lambda: None,  # sizes from the frameworks' counts and estimates: the same each load
        clock=Clock(),
        host_tier=HostTier(1 << 30),
        on_device=True,  # models demote themselves, as on a GPU
    )
    cache.capacity = 1 << 30
    first = await cache.load(source)
    entry = cache.acquire("m")
    assert entry is not None and entry.model is not None
    spec = entry.model.signature.inputs[0]
    x = np.random.default_rng(0).standard_normal([1 if d < 0 else d for d in spec.shape])
    x = x.astype(np.float32) if kind != "export" else x.reshape(1, -1).astype(np.float32)
    outputs = [o.name for o in entry.model.signature.outputs]
    before = entry.model.predict({spec.name: x}, outputs)
    cache.release(entry)
    cache.capacity = first.size  # room for one: the filler evicts m
    await cache.load(filler)
    (held,) = cache.view().demoted
    assert held.model_id == "m" and held.host_bytes > 0
    assert held.moved  # the runtime's own demotion, not the file's bytes
    source.file.unlink()
    assert (await cache.load(source)).promoted
    entry = cache.acquire("m")
    assert entry is not None and entry.model is not None
    after = entry.model.predict({spec.name: x}, outputs)
    cache.release(entry)
    for name in outputs:
        np.testing.assert_array_equal(after[name], before[name])
    await cache.aclose()
