"""The model cache with fake runtimes: accounting, eviction, sharing, failures, timeouts."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mesh.errors import CapacityExhausted, DeadlineExceeded, ModelLoadFailed
from mesh.pod.cache import ModelCache
from mesh.pod.memory import MemoryReleaser
from mesh.runtimes.registry import RuntimeRegistry
from tests.fakes import FakeRuntime, fake_source
from tests.helpers import wait_until_async

KB = 10_000  # above the cache's one-page floor on a model's size


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def runtime() -> FakeRuntime:
    return FakeRuntime()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_cache(
    runtime: FakeRuntime, clock: Clock, capacity: int = 10 * KB, **kw: object
) -> ModelCache:
    return ModelCache(
        capacity=capacity,
        runtimes=RuntimeRegistry([runtime]),
        meter=runtime.memory.read,
        clock=clock,
        **kw,  # type: ignore[arg-type]
    )


async def test_measured_size_is_charged_and_reported(
    runtime: FakeRuntime, clock: Clock, tmp_path: Path
) -> None:
    cache = make_cache(runtime, clock)
    outcome = await cache.load(fake_source(tmp_path, "a", 3 * KB))
    assert outcome.measured == 3 * KB
    assert outcome.size == 3 * KB
    assert outcome.estimated == 3 * KB  # 3 KB on disk x factor 1.0
    assert cache.used == 3 * KB
    again = await cache.load(fake_source(tmp_path, "a", 3 * KB))
    assert again.already_loaded
    assert runtime.loads == ["a"]
    await cache.aclose()


async def test_estimate_learns_from_measured_loads(
    runtime: FakeRuntime, clock: Clock, tmp_path: Path
) -> None:
    cache = make_cache(runtime, clock, capacity=10**9)
    # On disk 10 KB, in memory 50 KB: a factor of 5 that the cache should move towards.
    for i in range(10):
        src = fake_source(tmp_path, f"m{i}", 10 * KB)
        src = type(src)(src.model_id, src.format, src.file, options={"size": str(50 * KB)})
        first = cache.estimate(src)
        await cache.load(src)
    assert first > 40 * KB  # after nine loads the estimate is close to the truth
    await cache.aclose()


async def test_evicts_least_recently_used_as_one_set(
    runtime: FakeRuntime, clock: Clock, tmp_path: Path
) -> None:
    cache = make_cache(runtime, clock)
    for name in "abcd":
        await cache.load(fake_source(tmp_path, name, 2 * KB))
        clock.now += 1
    for name in "cab":  # use order: d (oldest use: load), c, a, b
        cache.release(cache.acquire(name))
        clock.now += 1
    outcome = await cache.load(fake_source(tmp_path, "e", 5 * KB))
    # 8 KB used, 5 KB more: 3 KB must go -> d (2 KB) then c (2 KB); nothing else.
    assert outcome.evicted == ("d", "c")
    assert sorted(cache.loaded_ids()) == ["a", "b", "e"]
    assert cache.used == 9 * KB
    await cache.aclose()


async def test_never_evicts_a_model_in_flight(
    runtime: FakeRuntime, clock: Clock, tmp_path: Path
) -> None:
    cache = make_cache(runtime, clock)
    await cache.load(fake_source(tmp_path, "old", 4 * KB))
    clock.now += 1
    await cache.load(fake_source(tmp_path, "new", 4 * KB))
    held = cache.acquire("old")
    assert held is not None
    outcome = await cache.load(fake_source(tmp_path, "x", 4 * KB))
    assert outcome.evicted == ("new",)
    assert cache.is_loaded("old")
    cache.release(held)
    await cache.aclose()


async def test_churn_guard_and_cannot_fit_message(
    runtime: FakeRuntime, clock: Clock, tmp_path: Path
) -> None:
    cache = make_cache(runtime, clock, min_model_age=60)
    await cache.load(fake_source(tmp_path, "a", 6 * KB))
    clock.now += 10
    with pytest.raises(CapacityExhausted) as err:
        await cache.load(fake_source(tmp_path, "b", 6 * KB))
    message = str(err.value)
    assert "'b'" in message
    assert "capacity 100000" in message
    assert "used 60000" in message
    assert "1 used within 60s" in message
    assert cache.is_loaded("a")  # nothing was unloaded for a load that could not fit
    clock.now += 60
    outcome = await cache.load(fake_source(tmp_path, "b", 6 * KB))
    assert outcome.evicted == ("a",)
    await cache.aclose()


async def test_larger_than_capacity_fails_without_loading(
    runtime: FakeRuntime, clock: Clock, tmp_path: Path
) -> None:
    cache = make_cache(runtime, clock)
    with pytest.raises(CapacityExhausted, match="whole capacity"):
        await cache.load(fake_source(tmp_path, "huge", 20 * KB))
    assert runtime.loads == []


async def test_measured_overshoot_evicts_more(
    runtime: FakeRuntime, clock: Clock, tmp_path: Path
) -> None:
    cache = make_cache(runtime, clock)
    await cache.load(fake_source(tmp_path, "a", 4 * KB))
    clock.now += 1
    await cache.load(fake_source(tmp_path, "b", 4 * KB))
    clock.now += 1
    # 1 KB on disk, so estimated small, but it really holds 5 KB: "a" must make way after.
    src = fake_source(tmp_path, "c", 1 * KB)
    src = type(src)(src.model_id, src.format, src.file, options={"size": str(5 * KB)})
    outcome = await cache.load(src)
    assert outcome.evicted == ("a",)
    assert cache.used <= cache.capacity
    await cache.aclose()


async def test_a_measured_overshoot_nothing_can_make_room_for_unloads_the_new_model(
    runtime: FakeRuntime, clock: Clock, tmp_path: Path
) -> None:
    cache = make_cache(runtime, clock, min_model_age=60)  # "a" and "b" stay: used just now
    await cache.load(fake_source(tmp_path, "a", 4 * KB))
    await cache.load(fake_source(tmp_path, "b", 4 * KB))
    held = runtime.memory.read()
    # 1 KB on disk, so estimated to fit, but it really holds 5 KB: 13 KB in a 10 KB pod.
    src = fake_source(tmp_path, "c", 1 * KB)
    src = type(src)(src.model_id, src.format, src.file, options={"size": str(5 * KB)})
    with pytest.raises(CapacityExhausted, match="'c'"):
        await cache.load(src)
    assert not cache.is_loaded("c")  # the new model went, not a guarded one
    assert cache.is_loaded("a") and cache.is_loaded("b")
    assert cache.used <= cache.capacity
    assert runtime.memory.read() == held  # and its memory with it
    await cache.aclose()


async def test_concurrent_loads_of_one_model_share_it(
    runtime: FakeRuntime, clock: Clock, tmp_path: Path
) -> None:
    cache = make_cache(runtime, clock)
    outcomes = await asyncio.gather(
        *(cache.load(fake_source(tmp_path, "m", 1 * KB, delay=0.05)) for _ in range(20))
    )
    assert runtime.loads == ["m"]
    assert sum(not o.already_loaded for o in outcomes) >= 1
    await cache.aclose()


async def test_loads_of_different_models_run_in_parallel_up_to_the_limit(
    runtime: FakeRuntime, clock: Clock, tmp_path: Path
) -> None:
    cache = make_cache(runtime, clock, capacity=10**9, load_concurrency=3)
    await asyncio.gather(
        *(cache.load(fake_source(tmp_path, f"m{i}", KB, delay=0.1)) for i in range(9))
    )
    assert runtime.max_running == 3
    await cache.aclose()


async def test_failed_load_frees_everything_and_is_remembered(
    runtime: FakeRuntime, clock: Clock, tmp_path: Path
) -> None:
    cache = make_cache(runtime, clock, failure_ttl=30)
    bad = fake_source(tmp_path, "bad", 2 * KB, fail="weights are garbage")
    with pytest.raises(ModelLoadFailed, match="weights are garbage"):
        await cache.load(bad)
    assert cache.used == 0
    with pytest.raises(ModelLoadFailed, match=r"failed to load .* weights are garbage"):
        await cache.load(bad)
    assert runtime.loads == ["bad"]  # remembered: no second attempt
    assert [f.model_id for f in cache.view().failures] == ["bad"]
    with pytest.raises(ModelLoadFailed):
        await cache.load(bad, retry_failed=True)  # an explicit load tries again
    assert runtime.loads == ["bad", "bad"]
    clock.now += 31
    assert cache.view().failures == ()
    await cache.aclose()


async def test_load_timeout_keeps_bytes_until_the_thread_ends(
    runtime: FakeRuntime, clock: Clock, tmp_path: Path
) -> None:
    cache = make_cache(runtime, clock, load_timeout=0.2, load_concurrency=1)
    gate = runtime.gates["slow"] = threading.Event()
    with pytest.raises(DeadlineExceeded, match=r"0\.2s"):
        await cache.load(fake_source(tmp_path, "slow", 3 * KB))
    assert not cache.is_loaded("slow")
    assert cache.used == 3 * KB  # the stuck thread still holds its estimate
    gate.set()
    await wait_until_async(lambda: cache.used == 0, what="the late thread's bytes freed")
    await wait_until_async(lambda: runtime.closed == 1)  # what it loaded was closed, not leaked
    await cache.aclose()


async def test_two_timed_out_loads_hold_both_their_bytes_until_their_threads_end(
    runtime: FakeRuntime, clock: Clock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache(runtime, clock, load_timeout=0.2, load_concurrency=2)
    gates = {m: runtime.gates.setdefault(m, threading.Event()) for m in ("slow-a", "slow-b")}
    await asyncio.gather(
        *(
            cache.load(fake_source(tmp_path, "slow-a", 3 * KB)),
            cache.load(fake_source(tmp_path, "slow-b", 4 * KB, fail="late and broken")),
        ),
        return_exceptions=True,
    )
    assert cache.used == 7 * KB  # both stuck threads still hold their estimates
    gates["slow-b"].set()  # this one ends in an error: its bytes go, nothing to close
    await wait_until_async(lambda: cache.used == 3 * KB, what="slow-b's bytes freed")
    assert runtime.closed == 0
    gates["slow-a"].set()
    await wait_until_async(lambda: cache.used == 0 and runtime.closed == 1)
    assert "Exception in callback" not in caplog.text  # a late failure is handled, not raised
    await cache.aclose()


async def test_unload_waits_for_requests_in_flight(
    runtime: FakeRuntime, clock: Clock, tmp_path: Path
) -> None:
    cache = make_cache(runtime, clock)
    await cache.load(fake_source(tmp_path, "m", 2 * KB))
    held = cache.acquire("m")
    assert held is not None
    unloading = asyncio.create_task(cache.unload("m"))
    await asyncio.sleep(0.05)
    assert not unloading.done()
    assert cache.acquire("m") is None  # no new request takes a model being unloaded
    cache.release(held)
    assert await unloading == 2 * KB
    assert cache.used == 0
    assert runtime.memory.used == 100 * 2**20
    await cache.aclose()


async def test_overlapping_loads_are_not_measured_by_rss(
    runtime: FakeRuntime, clock: Clock, tmp_path: Path
) -> None:
    cache = make_cache(runtime, clock, capacity=10**9, load_concurrency=2)
    a, b = await asyncio.gather(
        cache.load(fake_source(tmp_path, "a", 3 * KB, delay=0.1)),
        cache.load(fake_source(tmp_path, "b", 5 * KB, delay=0.1)),
    )
    # Each one's RSS delta would include the other's bytes: the estimate stands instead.
    assert a.measured is None
    assert b.measured is None
    assert a.size == a.estimated
    await cache.aclose()


_CHURN = """
import asyncio, json, sys
from pathlib import Path
from mesh.pod.cache import ModelCache, ModelSource
from mesh.runtimes.registry import RuntimeRegistry

async def main():
    runtimes = RuntimeRegistry.discover(["onnx"])
    runtimes.warm_up("onnx")
    cache = ModelCache(capacity=2**30, runtimes=runtimes)
    sizes = []
    for i in range(12):
        outcome = await cache.load(ModelSource(f"m{i}", "onnx", Path(sys.argv[1])))
        sizes.append(outcome.size)
        await cache.unload(f"m{i}")
    await cache.aclose()
    print(json.dumps(sizes))

asyncio.run(main())
"""


def test_churn_does_not_shrink_what_a_real_model_is_charged(model_dir: Path) -> None:
    """Loads after unloads reuse freed heap; the pod trims it first, so that each load still
    measures what it really takes (without that, under churn copies were charged a few KiB).

    In a process of its own, as a pod is: RSS is the process's, and in the test process the
    threads earlier tests leave behind free memory while these loads are measured."""
    file = model_dir / "mlp" / "model.onnx"
    done = subprocess.run(
        [sys.executable, "-c", _CHURN, str(file)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    sizes = json.loads(done.stdout.strip().splitlines()[-1])
    weights = file.stat().st_size  # the graph's weights, which the session holds in memory
    # Every load: under churn the RSS delta read a quarter of the weights (memory given back
    # during the load that was not the load's), and the pod overfilled.
    assert min(sizes) >= weights, sizes


async def test_an_unload_trims_the_heap_it_freed_before_a_later_load_would(
    runtime: FakeRuntime, clock: Clock, tmp_path: Path
) -> None:
    """The heap an unload frees is trimmed in the unload thread once the unload has answered,
    so that its memory goes back to the system without waiting for a load; a load trims again
    before it measures (whatever else freed memory since), so that its delta is its own."""
    trims: list[str] = []
    releaser = MemoryReleaser(trim=lambda: trims.append(threading.current_thread().name))
    cache = make_cache(runtime, clock, releaser=releaser)
    await cache.load(fake_source(tmp_path, "a", 3 * KB))
    loaded = len(trims)  # the load's own trims, before and after it measured
    await cache.unload("a")
    await wait_until_async(lambda: len(trims) > loaded, what="the freed heap trimmed")
    assert [t.split("_")[0] for t in trims[loaded:]] == ["mesh-unload"]
    unloaded = len(trims)
    outcome = await cache.load(fake_source(tmp_path, "b", 3 * KB))
    assert {t.split("_")[0] for t in trims[unloaded:]} == {"mesh-load"}  # before it measured
    assert outcome.measured == 3 * KB
    await cache.aclose()
