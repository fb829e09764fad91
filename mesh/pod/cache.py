"""The model cache: models in memory within a byte capacity, least recently used evicted first.

All bookkeeping happens on the event loop thread, so it needs no locks: a request takes a model
with `acquire` (counting it in flight and marking it used) and gives it back with `release`, both
synchronous. Loads and unloads run in worker threads.

- A load is charged its estimate (file size times a per-format factor learned from past loads)
  while it runs, then what it was measured to cost: the process RSS delta (or the GPU's, on a
  GPU pod) when no other load or unload overlapped it, else the framework's own count or the
  estimate.
- A load that does not fit chooses its victims as one complete set before unloading any: least
  recently used first, never a model with requests in flight, never one used within
  `min_model_age`. If even that set cannot make room, the load fails with CapacityExhausted and
  nothing is unloaded.
- Concurrent loads of one model share it. Loads of different models run in parallel, at most
  `load_concurrency` at once. A load that outlives `load_timeout` fails; its thread cannot be
  stopped, so its slot and its bytes stay charged until the thread ends, then are freed.
- A failed load frees what it took and is remembered for `failure_ttl` seconds: requests for the
  model fail fast with the load error, until an explicit load retries it.
- An unload waits for the model's requests in flight, then closes it, collects garbage and trims
  the heap so that the memory really goes back to the system. On an accelerator an UnloadAudit
  (mesh.pod.recycle) then checks that the device's memory came back.
- With a host tier (mesh.pod.hosttier), a model evicted for room is demoted there instead, and
  its next load is a promotion from host memory: no file, no puller. An explicit unload drops
  the model from both tiers.

This module is the ledger (entries, claims, eviction plans, failures, unloads, views); the value
types are mesh.pod.cachetypes, sizing and measurement mesh.pod.sizing, the load executor
(threads, concurrency, timeout, orphaned loads) mesh.pod.loading.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from mesh.errors import (
    CapacityExhausted,
    DeadlineExceeded,
    InvalidRequest,
    MeshError,
    ModelLoadFailed,
    ModelNotFound,
    ModelNotReady,
)
from mesh.llm.protocol import refuse_request_batching
from mesh.placement.eviction import Candidate, choose_victims
from mesh.pod.batching import BatchPolicy, runtime_options
from mesh.pod.cachetypes import (
    CachedModel,
    CacheView,
    Failure,
    LoadOutcome,
    ModelSource,
    ModelView,
    State,
)
from mesh.pod.hosttier import Demoted, HostTier, demote, file_copy
from mesh.pod.loading import LoadExecutor
from mesh.pod.memory import MemoryReleaser, rss_bytes
from mesh.pod.metrics import PodMetrics
from mesh.pod.recycle import UnloadAudit
from mesh.pod.sizing import (
    MIN_SIZE,
    Activities,
    Activity,
    ActivityScope,
    Measured,
    SizeFactors,
    measure_load,
    safe_hint,
)
from mesh.runtimes.base import Device, HostCopy, LoadedModel, LoadRequest, Runtime
from mesh.runtimes.registry import RuntimeRegistry

__all__ = [
    "CacheView",
    "CachedModel",
    "Failure",
    "LoadOutcome",
    "ModelCache",
    "ModelSource",
    "ModelView",
    "State",
]

log = logging.getLogger(__name__)


class ModelCache:
    """Loaded models within `capacity` bytes.

    >>> cache = ModelCache(capacity=2**30, runtimes=RuntimeRegistry.discover())
    >>> outcome = await cache.load(ModelSource("mlp", "onnx", Path("models/mlp/model.onnx")))
    >>> entry = cache.acquire("mlp")  # None if not loaded
    >>> try: ...  # entry.model.predict(...)
    ... finally: cache.release(entry)
    """

    def __init__(
        self,
        *,
        capacity: int,
        runtimes: RuntimeRegistry,
        device: Device | None = None,
        load_concurrency: int = 2,
        load_timeout: float = 300.0,
        min_model_age: float = 0.0,
        failure_ttl: float = 60.0,
        metrics: PodMetrics | None = None,
        meter: Callable[[], int | None] = rss_bytes,
        clock: Callable[[], float] = time.monotonic,
        releaser: MemoryReleaser | None = None,
        host_tier: HostTier | None = None,
        audit: UnloadAudit | None = None,
        on_device: bool = False,
    ) -> None:
        """`on_device`: the cache's memory is an accelerator's (models demote themselves to
        the host tier where they can); `audit` checks each unload gave its memory back."""
        self.capacity = capacity
        self._runtimes = runtimes
        self._device = device or Device()
        self._min_age = min_model_age
        self._failure_ttl = failure_ttl
        self._metrics = metrics
        self._meter = meter
        self._clock = clock
        self._entries: dict[str, CachedModel] = {}
        self._failures: dict[str, Failure] = {}
        self._sizes = SizeFactors(runtimes)
        # Loads in worker threads, bounded in number and time (mesh.pod.loading).
        self._loads = LoadExecutor(
            load_concurrency, load_timeout, self._measured, self._orphan_done
        )
        self._unload_pool = ThreadPoolExecutor(1, thread_name_prefix="mesh-unload")
        # Demotions to file bytes read the file here, after the eviction has freed the room.
        self._read_pool = ThreadPoolExecutor(1, thread_name_prefix="mesh-demote")
        self._reading: dict[str, ModelSource] = {}  # evicted, its file being read for the tier
        self._reads: set[asyncio.Task[None]] = set()
        self._activities = Activities()
        self._releaser = releaser or MemoryReleaser()
        self._listeners: list[Callable[[], None]] = []
        self._gone_callbacks: list[Callable[[str], None]] = []
        self._left_callbacks: list[Callable[[str], None]] = []
        self._host = host_tier
        self._audit = audit
        self._on_device = on_device
        if host_tier is not None:
            host_tier.on_change(self._state_changed)
            host_tier.on_let_go(self._host_let_go)
        if metrics is not None:
            metrics.capacity.labels("device").set(capacity)
            metrics.capacity.labels("host").set(host_tier.capacity if host_tier is not None else 0)
            metrics.lru_age.set_function(self.lru_age)

    # -- the request path: synchronous, on the loop ------------------------------------------

    def acquire(self, model_id: str) -> CachedModel | None:
        """Take a loaded model for one request, or None if it is not loaded and serving."""
        entry = self._entries.get(model_id)
        if entry is None or entry.state is not State.LOADED:
            return None
        entry.in_flight += 1
        entry.last_used = self._clock()
        entry.last_used_wall = time.time()
        return entry

    def release(self, entry: CachedModel) -> None:
        entry.in_flight -= 1
        if entry.in_flight == 0 and entry.idle is not None:
            entry.idle.set()

    def is_loaded(self, model_id: str) -> bool:
        entry = self._entries.get(model_id)
        return entry is not None and entry.state is State.LOADED

    def source_of(self, model_id: str) -> ModelSource | None:
        """The source of a model loaded or loading (not one being unloaded)."""
        entry = self._entries.get(model_id)
        if entry is None or entry.state is State.UNLOADING:
            return None
        return entry.source

    def demoted_source(self, model_id: str) -> ModelSource | None:
        """The source of a model in the host tier (a load of it is a promotion)."""
        return None if self._host is None else self._host.source_of(model_id)

    def failure(self, model_id: str) -> Failure | None:
        failure = self._failures.get(model_id)
        if failure is not None and self._clock() - failure.at > self._failure_ttl:
            del self._failures[model_id]
            return None
        return failure

    @property
    def used(self) -> int:
        return sum(e.size for e in self._entries.values()) + self._loads.orphaned

    # -- loading -------------------------------------------------------------------------------

    async def load(self, source: ModelSource, *, retry_failed: bool = False) -> LoadOutcome:
        """Load `source` unless it is loaded; share a load already running."""
        model_id = source.model_id
        while (entry := self._entries.get(model_id)) is not None:
            if entry.state is State.LOADED:
                return LoadOutcome(
                    model_id, entry.size, entry.measured, entry.estimated, 0.0, True,
                    artifact_bytes=entry.source.disk_bytes(),
                )  # fmt: skip
            if entry.state is State.LOADING:
                await entry.settled.wait()
                if entry.error is not None:
                    raise type(entry.error)(str(entry.error))
            else:
                await entry.gone.wait()
        failure = self.failure(model_id)
        if failure is not None:
            if not retry_failed:
                ago = self._clock() - failure.at
                raise failure.kind(
                    f"model {model_id!r} failed to load {ago:.0f}s ago: {failure.error}"
                )
            del self._failures[model_id]
        # Claim the load synchronously, so that a concurrent caller finds the entry; then run it
        # in its own task, so that a caller who gives up does not cancel it for the others.
        held = self._host.take(model_id) if self._host is not None else None
        if held is not None:
            try:
                entry, victims, _, options = self._claim(held.source, demoted=held)
            except BaseException:
                self._host.put(held)  # type: ignore[union-attr]  # no room: it stays demoted
                raise
            complete = self._complete(entry, victims, held.copy.restore, options, held.copy)
        else:
            entry, victims, runtime, options = self._claim(source)
            complete = self._complete(entry, victims, runtime.load, options)
        task = asyncio.create_task(complete)
        task.add_done_callback(_consume)
        return await asyncio.shield(task)

    def estimate(self, source: ModelSource) -> int:
        """What `source` is expected to take (mesh.pod.sizing)."""
        return self._sizes.estimate(source)

    def _claim(
        self, source: ModelSource, demoted: Demoted | None = None
    ) -> tuple[CachedModel, list[CachedModel], Runtime, dict[str, str]]:
        model_id = source.model_id
        runtime = self._runtimes.get(source.format)
        options = {**source.config.options, **source.options}
        refuse_request_batching(model_id, runtime.name, options)
        BatchPolicy.from_options(model_id, options)  # a bad batching option fails the load
        options = runtime_options(options)
        unknown = set(options) - runtime.option_keys
        if unknown:
            raise InvalidRequest(
                f"model {model_id!r}: runtime {runtime.name} has no options {sorted(unknown)}; "
                f"it takes {sorted(runtime.option_keys)}"
            )
        disk = source.disk_bytes()  # read once: the estimate, the factor, the outcome
        if demoted is not None:  # a promotion: its file may be gone, its size is known
            estimated = max(demoted.device_bytes, MIN_SIZE)
        elif not source.file.is_file():
            raise ModelNotFound(f"model {model_id!r}: no model file at {source.file}")
        else:
            estimated = self._sizes.estimate(source, disk)
        base = None
        if source.base is not None:
            base = self._entries.get(source.base)
            if base is None or base.state is not State.LOADED:
                raise ModelNotReady(
                    f"adapter {model_id!r}: its base model {source.base!r} is not loaded here"
                )
        victims = self._plan(model_id, estimated, keep=source.base)

        now = self._clock()
        entry = CachedModel(source, estimated, now, disk)
        self._entries[model_id] = entry
        if base is not None:
            base.dependents.add(model_id)
        for victim in victims:
            victim.state = State.UNLOADING
        self._state_changed()
        return entry, victims, runtime, options

    async def _complete(
        self,
        entry: CachedModel,
        victims: list[CachedModel],
        load: Callable[[LoadRequest], LoadedModel],
        options: dict[str, str],
        promoting: HostCopy | None = None,
    ) -> LoadOutcome:
        source, model_id, estimated = entry.source, entry.model_id, entry.estimated
        started = time.perf_counter()
        try:
            evicted = [v.model_id for v in victims]
            await asyncio.gather(*(self._unload(v, "capacity") for v in victims))
            base = self._entries.get(source.base) if source.base is not None else None
            if source.base is not None and (base is None or base.model is None):
                raise ModelNotReady(f"adapter {model_id!r}: its base {source.base!r} went away")
            request = LoadRequest(
                model_id,
                source.file,
                source.config,
                options,
                self._device,
                base=base.model if base is not None else None,
            )
            model, measured, host_measured = await self._run_load(entry, load, request)
            entry.model = model
            entry.measured = measured
            entry.host_measured = host_measured
            hint = safe_hint(model)
            if measured is not None and not self._on_device:
                # In host memory a model keeps at least about its file's bytes: an RSS delta
                # below that saw memory given back during the load that was not the load's
                # (under churn a 340 KB ONNX MLP read 90 KiB), and charging it would overfill
                # the pod. Above it, the delta is taken as measured.
                measured = max(measured, entry.artifact_bytes)
            entry.size = max(
                measured if measured is not None else max(hint, estimated), hint, MIN_SIZE
            )
            if measured is not None and promoting is None:
                self._sizes.learn(source, measured, entry.artifact_bytes)
            evicted += await self._fit_after_load(entry, keep=source.base)
        except BaseException as exc:
            if promoting is not None:
                _release_copy(promoting, model_id)
            self._fail(entry, exc)
            if entry.error is None or entry.error is exc or isinstance(exc, asyncio.CancelledError):
                raise
            raise entry.error from exc
        seconds = time.perf_counter() - started
        entry.state = State.LOADED
        entry.loaded_at = time.time()
        entry.last_used = self._clock()
        entry.settled.set()
        if self._metrics is not None:
            if promoting is not None:
                self._metrics.promotions.inc()
                self._metrics.promotion_seconds.observe(seconds)
            else:
                self._metrics.load_seconds.observe(seconds)
        self._state_changed()
        log.info(
            "%s %s (%s): %d bytes (measured %s, estimated %d) in %.3fs%s",
            "promoted" if promoting is not None else "loaded",
            model_id,
            source.format,
            entry.size,
            measured,
            estimated,
            seconds,
            f", evicted {evicted}" if evicted else "",
        )
        return LoadOutcome(
            model_id,
            entry.size,
            measured,
            estimated,
            seconds,
            False,
            tuple(evicted),
            promoted=promoting is not None,
            artifact_bytes=entry.artifact_bytes,
        )

    def _plan(
        self,
        model_id: str,
        need_bytes: int,
        *,
        charged: bool = False,
        keep: str | None = None,
    ) -> list[CachedModel]:
        """Victims to unload so that a model of `need_bytes` fits; CapacityExhausted if none do.

        `charged`: the model is already counted in `used` (a load measured larger than its
        estimate), so only the excess must go, and the model itself is no candidate.
        `keep`: a model that must stay (the base of the adapter being loaded).

        A base and its adapters are one candidate: its size is theirs together, it is in use
        while any of them is, and it was used when any of them last was; an adapter is also a
        candidate of its own.
        """
        if need_bytes > self.capacity:
            raise CapacityExhausted(
                f"model {model_id!r} needs {need_bytes} bytes, more than the pod's whole "
                f"capacity of {self.capacity}"
            )
        used = self.used
        need = used + (0 if charged else need_bytes) - self.capacity
        if need <= 0:
            return []
        loaded = [
            e
            for e in self._entries.values()
            if e.state is State.LOADED and e.model_id != model_id and e.model_id != keep
        ]
        candidates = [self._candidate(e) for e in loaded]
        now = self._clock()
        chosen = choose_victims(candidates, need, now, self._min_age)
        if chosen is None:
            busy = sum(1 for e in loaded if e.in_flight)
            guarded = sum(
                1 for e in loaded if not e.in_flight and now - e.last_used < self._min_age
            )
            evictable = sum(
                e.size for e in loaded if not e.in_flight and now - e.last_used >= self._min_age
            )
            raise CapacityExhausted(
                f"model {model_id!r} needs {need_bytes} bytes: capacity {self.capacity}, used "
                f"{used}, evictable {evictable} ({busy} models in flight, {guarded} used within "
                f"{self._min_age:g}s cannot be evicted)"
            )
        by_id = {e.model_id: e for e in loaded}
        victims = [by_id[m] for m in chosen]
        bases = {v.model_id for v in victims}
        # An adapter whose base goes is unloaded with its base (first), not on its own.
        return [v for v in victims if v.source.base not in bases]

    def _candidate(self, entry: CachedModel) -> Candidate:
        group = [entry, *(self._entries[d] for d in entry.dependents if d in self._entries)]
        # An adapter loading into its base keeps the base as busy as a request would.
        loading = sum(e.state is State.LOADING for e in group[1:])
        return Candidate(
            entry.model_id,
            sum(e.size for e in group),
            max(e.last_used for e in group),
            sum(e.in_flight for e in group) + loading,
        )

    async def _fit_after_load(self, entry: CachedModel, keep: str | None = None) -> list[str]:
        """The measured size may exceed the estimate: evict more, or give the model up."""
        if self.used <= self.capacity:
            return []
        victims = self._plan(entry.model_id, entry.size, charged=True, keep=keep)
        for victim in victims:
            victim.state = State.UNLOADING
        await asyncio.gather(*(self._unload(v, "capacity") for v in victims))
        return [v.model_id for v in victims]

    async def _run_load(
        self, entry: CachedModel, load: Callable[[LoadRequest], LoadedModel], request: LoadRequest
    ) -> Measured:
        return await self._loads.run(entry.model_id, entry.size, load, request)

    def _orphan_done(self, model: LoadedModel | None, size: int) -> None:
        """A load given up on ended: close what it made, and say the bytes are free."""
        if model is not None:
            self._unload_pool.submit(self._closed, model, size)
        self._state_changed()

    def _measured(
        self, load: Callable[[LoadRequest], LoadedModel], request: LoadRequest
    ) -> Measured:
        return measure_load(
            load, request, activities=self._activities, meter=self._meter,
            releaser=self._releaser, on_device=self._on_device,
        )  # fmt: skip

    def _fail(self, entry: CachedModel, exc: BaseException) -> None:
        error: MeshError
        if isinstance(exc, MeshError):
            error = exc
        elif isinstance(exc, asyncio.CancelledError):
            error = ModelLoadFailed(f"load of model {entry.model_id!r} was cancelled")
        else:
            error = ModelLoadFailed(
                f"model {entry.model_id!r} ({entry.source.format}) failed to load: "
                f"{type(exc).__name__}: {exc}"
            )
        entry.error = error
        self._entries.pop(entry.model_id, None)
        if entry.source.base is not None and entry.source.base in self._entries:
            self._entries[entry.source.base].dependents.discard(entry.model_id)
        if not isinstance(error, CapacityExhausted) and not isinstance(exc, asyncio.CancelledError):
            self._failures[entry.model_id] = Failure(
                entry.model_id,
                entry.source.format,
                str(error),
                type(error),
                self._clock(),
                time.time(),
            )
        if entry.model is not None:
            self._unload_pool.submit(self._closed, entry.model, entry.size)
            entry.model = None
        entry.settled.set()
        entry.gone.set()
        self._gone(entry.model_id)
        if self._metrics is not None:
            reason = {
                CapacityExhausted: "capacity",
                DeadlineExceeded: "timeout",
                InvalidRequest: "invalid",
            }.get(type(error), "error")
            self._metrics.load_failures.labels(reason).inc()
        self._state_changed()
        log.warning("load of %s failed: %s", entry.model_id, error)

    # -- unloading -----------------------------------------------------------------------------

    async def unload(self, model_id: str) -> int | None:
        """Unload a model once its requests in flight end; the bytes freed, None if absent.

        The model's copy in the host tier, if any, goes too, and for a base the copies of its
        adapters (as its loaded adapters are unloaded with it).
        """
        if self._host is not None:
            self._host.drop(model_id)
            for adapter in self._host.adapters_of(model_id):
                self._host.drop(adapter)
            if self._reading.pop(model_id, None) is not None:  # its read's copy is let go
                self._maybe_left(model_id)
        while (entry := self._entries.get(model_id)) is not None:
            if entry.state is State.LOADING:
                await entry.settled.wait()
            elif entry.state is State.UNLOADING:
                await entry.gone.wait()
                return None
            else:
                entry.state = State.UNLOADING
                size = entry.size
                await self._unload(entry, "request")
                return size
        return None

    async def _unload(self, entry: CachedModel, reason: str) -> None:
        started = time.perf_counter()
        dependents = [self._entries[d] for d in entry.dependents if d in self._entries]
        if dependents:
            # A base's adapters go first: they run inside it. One still loading is waited for;
            # one another caller is unloading already is waited for, not unloaded twice.
            for dep in dependents:
                if dep.state is State.LOADING:
                    await dep.settled.wait()
            mine: list[CachedModel] = []
            theirs: list[CachedModel] = []
            for dep in dependents:
                if self._entries.get(dep.model_id) is not dep:
                    continue  # gone meanwhile (its load failed, or it was unloaded)
                if dep.state is State.LOADED:
                    dep.state = State.UNLOADING
                    mine.append(dep)
                elif dep.state is State.UNLOADING:
                    theirs.append(dep)
            await asyncio.gather(
                *(self._unload(d, reason) for d in mine), *(d.gone.wait() for d in theirs)
            )
        if entry.in_flight:
            if entry.idle is None:
                entry.idle = asyncio.Event()
            await entry.idle.wait()
        model, entry.model = entry.model, None
        loop = asyncio.get_running_loop()
        demoted = False
        try:
            if model is not None and reason == "capacity" and self._host is not None:
                copy, moved = await loop.run_in_executor(
                    self._unload_pool, self._demoted, model, entry
                )
                if copy is None and moved and self._on_device:
                    # Closed, its device memory back: the load waiting for it goes on while
                    # the file is read into host memory.
                    self._read_later(entry)
                elif copy is None and moved:
                    # On a CPU-only pod the read takes the very memory the load is waiting
                    # for, and would spoil its measurement: read first (the model is closed).
                    self._reading[entry.model_id] = entry.source
                    await self._read_copy(entry)
                elif copy is not None:
                    dropped = self._host.put(
                        Demoted(entry.source, copy, entry.size, entry.last_used, moved)
                    )
                    demoted = self._host.holds(entry.model_id)
                    if self._metrics is not None:
                        self._metrics.demotions.inc(demoted)
                        self._metrics.host_evictions.inc(len(dropped))
            elif model is not None:
                await loop.run_in_executor(self._unload_pool, self._closed, model, entry)
        finally:
            self._entries.pop(entry.model_id, None)
            if entry.source.base is not None and entry.source.base in self._entries:
                self._entries[entry.source.base].dependents.discard(entry.model_id)
            entry.gone.set()
            self._gone(entry.model_id)
            if self._metrics is not None:
                self._metrics.unload_seconds.observe(time.perf_counter() - started)
                if reason != "request":
                    self._metrics.evictions.labels(reason).inc()
            self._state_changed()
        log.info(
            "%s %s (%s), freed %d bytes",
            "demoted" if demoted else "unloaded",
            entry.model_id,
            reason,
            entry.size,
        )

    def _closed(self, model: LoadedModel, entry: CachedModel | int) -> None:
        """Close a model in the unload thread; for a cache entry, check its memory came back."""
        if isinstance(entry, int):  # a model no entry holds any more (a load we gave up on)
            with self._activity():
                _close(model, self._releaser, entry)
            self._trim_soon()
            return
        with self._activity() as activity:
            before = self._audit.before() if self._audit is not None else None
            _close(model, self._releaser, entry.size)
            self._audited(entry, before, activity)
        self._trim_soon()

    def _trim_soon(self) -> None:
        """In the unload thread, after a close: trim the freed heap as the thread's next job,
        once the unload's caller has its answer, rather than in the next load (which would
        otherwise trim it before measuring, mesh.pod.memory)."""
        try:
            self._unload_pool.submit(self._trim_pending)
        except RuntimeError:  # the pool is shutting down: nothing is loaded any more
            self._releaser.trim_pending()

    def _trim_pending(self) -> None:
        # An activity like the close before it: a load measured while the trim gives memory
        # back would be charged less than it took, so such a load is not measured. A device
        # pod's meter reads the device, which a trim of the host's heap does not move: there
        # the trim leaves the next load (and so its unload's audit) measured.
        if self._on_device:
            self._releaser.trim_pending()
            return
        with self._activity():
            self._releaser.trim_pending()

    def _demoted(self, model: LoadedModel, entry: CachedModel) -> tuple[HostCopy | None, bool]:
        """Move a model evicted for room to the host tier, in the unload thread: (its copy,
        True) when the model moved itself; (None, True) when it was closed and its file's bytes
        are to be read; (None, False) when it was closed and nothing is kept."""
        with self._activity() as activity:
            before = self._audit.before() if self._audit is not None else None
            runtime = self._runtimes.get(entry.source.format)
            copy, keep = demote(model, runtime, entry.source, on_device=self._on_device)
            if copy is None:
                _close(model, self._releaser, entry.size)
            self._audited(entry, before, activity)
        if copy is None:
            self._trim_soon()
        return copy, keep

    def _read_later(self, entry: CachedModel) -> None:
        """Read an evicted model's file for the host tier after its eviction: a large file's
        read does not delay the load that waits for the room (on a GPU pod, 1 GB of ONNX)."""
        source = entry.source
        self._reading[source.model_id] = source
        task = asyncio.create_task(self._read_copy(entry))
        self._reads.add(task)
        task.add_done_callback(self._reads.discard)

    def _file_copy(self, runtime: Runtime, source: ModelSource) -> HostCopy | None:
        assert self._host is not None
        limit = self._host.capacity
        if self._on_device:  # the device's meter does not see host memory
            return file_copy(runtime, source, limit)
        with self._activity():  # a load measured meanwhile would count the bytes as its own
            return file_copy(runtime, source, limit)

    async def _read_copy(self, entry: CachedModel) -> None:
        source, model_id = entry.source, entry.model_id
        runtime = self._runtimes.get(source.format)
        loop = asyncio.get_running_loop()
        copy: HostCopy | None = None
        try:
            copy = await loop.run_in_executor(self._read_pool, self._file_copy, runtime, source)
        except Exception:
            log.exception("reading the file of %s for the host tier failed", model_id)
        # Still wanted: not unloaded meanwhile, and not loaded again from its file.
        current = self._entries.get(model_id)
        wanted = self._reading.get(model_id) is source and current in (None, entry)
        if self._reading.get(model_id) is source:
            del self._reading[model_id]
        if copy is not None and not wanted:
            _release_copy(copy, model_id)
            copy = None
        if copy is not None and self._host is not None:
            dropped = self._host.put(Demoted(source, copy, entry.size, entry.last_used, False))
            if self._metrics is not None:
                self._metrics.demotions.inc(self._host.holds(model_id))
                self._metrics.host_evictions.inc(len(dropped))
            if self._host.holds(model_id):
                log.info("demoted %s: its file's %d bytes kept", model_id, copy.nbytes)
        self._maybe_left(model_id)

    def _audited(self, entry: CachedModel, before: int | None, activity: Activity) -> None:
        if self._audit is None or before is None or entry.measured is None:
            return
        if not activity.exclusive:
            return
        self._audit.after(entry.source.format, entry.measured, before, lambda: activity.exclusive)

    def _activity(self) -> ActivityScope:
        return self._activities.scope()

    # -- status and lifecycle ------------------------------------------------------------------

    def view(self) -> CacheView:
        entries = sorted(self._entries.values(), key=lambda e: e.last_used, reverse=True)
        models = tuple(
            ModelView(
                e.model_id,
                e.source.format,
                e.state.value,
                e.size,
                e.measured,
                e.estimated,
                e.last_used_wall,
                e.in_flight,
                e.loaded_at,
                e.host_measured,
            )
            for e in entries
        )
        for model_id in list(self._failures):
            self.failure(model_id)  # drops expired records
        host = self._host
        return CacheView(
            self.capacity,
            self.used,
            sum(1 for e in entries if e.state is State.LOADING),
            models,
            tuple(self._failures.values()),
            host.capacity if host is not None else 0,
            host.used if host is not None else 0,
            host.views() if host is not None else (),
            self._sizes.published(),
        )

    def lru_age(self) -> float:
        """Seconds since the least recently used loaded model was used; 0 with none.

        Called from the metrics thread: it copies the entries first (one C-level step).
        """
        loaded = [
            e.last_used_wall or e.loaded_at
            for e in list(self._entries.values())
            if e.state is State.LOADED
        ]
        return max(time.time() - min(loaded), 0.0) if loaded else 0.0

    def loaded_ids(self) -> list[str]:
        return [m for m, e in self._entries.items() if e.state is State.LOADED]

    def on_gone(self, callback: Callable[[str], None]) -> None:
        """Call `callback(model_id)` (on the loop) when a model leaves the cache, for any reason."""
        self._gone_callbacks.append(callback)

    def on_left(self, callback: Callable[[str], None]) -> None:
        """Call `callback(model_id)` (on the loop) when a model leaves the pod: it is neither
        in the cache nor in the host tier (a demotion is not leaving; the host tier letting
        the copy go, an unload or a failed promotion is)."""
        self._left_callbacks.append(callback)

    def _gone(self, model_id: str) -> None:
        for callback in self._gone_callbacks:
            try:
                callback(model_id)
            except Exception:
                log.exception("on_gone callback failed for %s", model_id)
        self._maybe_left(model_id)

    def _host_let_go(self, model_id: str) -> None:
        # While a demotion replaces the copy, or a copy too large is let go, the entry is still
        # here: its _gone says whether the model left.
        self._maybe_left(model_id)

    async def demotions_read(self) -> None:
        """Wait for the file reads of the demotions under way (their copies then in the tier)."""
        while self._reads:
            await asyncio.gather(*self._reads, return_exceptions=True)

    def on_pod(self, model_id: str) -> bool:
        """Whether the model is anywhere on the pod (either tier, loading or unloading): until
        it is not, the on_left callbacks are not told."""
        if model_id in self._entries or model_id in self._reading:
            return True
        return self._host is not None and self._host.holds(model_id)

    def _maybe_left(self, model_id: str) -> None:
        """Tell the on_left callbacks if the model is nowhere on the pod any more."""
        if not self.on_pod(model_id):
            self._left(model_id)

    def _left(self, model_id: str) -> None:
        for callback in self._left_callbacks:
            try:
                callback(model_id)
            except Exception:
                log.exception("on_left callback failed for %s", model_id)

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener` (on the loop) after every change of a model's state."""
        self._listeners.append(listener)

    def _state_changed(self) -> None:
        for listener in self._listeners:
            listener()
        if self._metrics is None:
            return
        self._metrics.used.labels("device").set(self.used)
        if self._host is not None:
            self._metrics.used.labels("host").set(self._host.used)
            self._metrics.demoted.set(len(self._host))
        states = [e.state for e in self._entries.values()]
        self._metrics.models_loaded.set(states.count(State.LOADED))
        self._metrics.loading.set(states.count(State.LOADING))

    async def aclose(self) -> None:
        """Unload every model and stop the worker threads."""
        await asyncio.gather(*(self.unload(m) for m in list(self._entries)), return_exceptions=True)
        self._reading.clear()  # reads under way end with their copies let go
        await asyncio.gather(*self._reads, return_exceptions=True)
        if self._host is not None:
            self._host.clear()
        self._loads.shutdown()
        self._unload_pool.shutdown(wait=True)
        self._read_pool.shutdown(wait=True)


def _consume(task: asyncio.Task[LoadOutcome]) -> None:
    # The load's own callers see its error; this keeps asyncio from logging it again when they
    # have all gone away.
    if not task.cancelled():
        task.exception()


def _release_copy(copy: HostCopy, model_id: str) -> None:
    try:
        copy.close()
    except Exception:
        log.exception("letting the host copy of %s go failed", model_id)


def _close(model: LoadedModel, releaser: MemoryReleaser, size: int) -> None:
    try:
        model.close()
    except Exception:
        log.exception("closing a model failed")
    del model
    releaser.release(size)
