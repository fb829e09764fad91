"""The pod's core: v2 inference and model control over the cache, with no gRPC in it.

It takes and returns mesh.inference's protocol-neutral requests and responses: the gRPC servicers
(mesh.pod.service), the REST backend (mesh.pod.rest) and a router in this process
(mesh.pod.wire.wire_infer) convert at their edges and call; everything a request does happens
here. Its metrics label a failure with the `status_label` it is given (the composition root
passes mesh.grpcstatus.status_name, so the labels are the gRPC code names they always were).
Decoding, the framework call and encoding run together in one worker thread of a bounded pool,
so the event loop only accounts (acquire, release) and the GIL-free parts of the frameworks run
in parallel.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from mesh import __version__
from mesh.errors import (
    InvalidRequest,
    MeshError,
    ModelNotFound,
    ModelNotReady,
    Unavailable,
)
from mesh.inference import InferRequest, InferResponse
from mesh.llm.chunks import Chunk, Stats
from mesh.llm.params import SamplingParams
from mesh.pod.batching import Batcher, BatchPolicy, run_one
from mesh.pod.cache import CachedModel, CacheView, LoadOutcome, ModelCache, ModelSource
from mesh.pod.codec import decode_request
from mesh.pod.devices import DeviceMemory
from mesh.pod.inline import InlineCalls
from mesh.pod.metrics import PodMetrics
from mesh.pod.repository import ModelRepository, check_model_id, source_for
from mesh.pod.text import TextRequest, decode_text_request, is_generative, text_response
from mesh.runtimes.base import Device, LoadedModel
from mesh.runtimes.registry import RuntimeRegistry
from mesh.storageref import StorageRef
from mesh.tensors import Signature

log = logging.getLogger(__name__)

SERVER_NAME = "mesh"
# The option a router sets on an adapter's LoadModel: its base, as registered in the mesh.
BASE_OPTION = "adapter.base"
# Attempts to get a model loaded and acquired: a just-loaded model can be evicted by another
# load before this request takes it, when every other model is busy.
_ACQUIRE_ATTEMPTS = 3


def _error_label(exc: MeshError) -> str:
    """The metrics label of a failure when the pod is given no `status_label`."""
    return "ERROR"


class ArtifactSource(Protocol):
    """Where a pod gets model files it does not have: its puller (mesh.puller.client)."""

    async def pull(self, model_id: str, storage: StorageRef) -> str:
        """Fetch the model's files from `storage`; the local path of its file or directory."""
        ...

    async def release(self, model_id: str) -> None:
        """The model is unloaded: its files may be evicted from the disk cache."""
        ...


class _Pull:
    """One model's pull from the puller, shared by the LoadModels of it that come meanwhile.

    It runs as its own task, so that a LoadModel that gives up (its deadline, its client gone)
    neither cancels it for the others nor leaves the puller's answer, and the hold it brings,
    to nobody. `users` counts the loads using it, and the pull while it runs: the last to leave
    gives the artifact back unless the model is on the pod (whose leaving then does).
    """

    __slots__ = ("storage", "task", "users")

    def __init__(self, task: asyncio.Task[str], storage: StorageRef) -> None:
        self.task = task
        self.storage = storage  # a load of other storage (registered anew) pulls its own
        self.users = 1


class ServerState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"


class DataPlane:
    def __init__(
        self,
        cache: ModelCache,
        runtimes: RuntimeRegistry,
        *,
        repository: ModelRepository | None = None,
        workers: int = 4,
        device: Device | None = None,
        metrics: PodMetrics | None = None,
        artifacts: ArtifactSource | None = None,
        inline_below: float = 0.0,
        status_label: Callable[[MeshError], str] = _error_label,
    ) -> None:
        self.cache = cache
        self._status_label = status_label
        self.artifacts = artifacts
        # Per model pulled: the storage its files came from (a LoadModel naming other storage
        # is a new registration: the host tier's copy of the old files is not promoted).
        self._pulled: dict[str, StorageRef] = {}
        # Per model: its release to the puller under way (a pull of it waits for it first).
        self._releases: dict[str, asyncio.Task[None]] = {}
        # Per model: its pull under way, or done and still used by a load (_Pull).
        self._pulls: dict[str, _Pull] = {}
        # The pulled files stay held while the model is anywhere on the pod: a model in the
        # host tier may be promoted and evicted again, and its copy is read from that file.
        cache.on_left(self._release)
        self.runtimes = runtimes
        self.repository = repository
        self.device = device or Device()
        # Where the device tier's memory is measured, for the pod's instance record.
        self.device_memory: DeviceMemory | None = None
        self.state = ServerState.STARTING
        self._metrics = metrics
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="mesh-infer")
        self._calls = InlineCalls(self._pool, inline_below)  # docs: mesh.pod.inline
        # Per model: the loaded object the entry was built for, and its batcher (None: off).
        self._batchers: dict[str, tuple[LoadedModel, Batcher | None]] = {}
        cache.on_gone(self._drop_batcher)

    # -- server --------------------------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.state is ServerState.READY

    def server_metadata(self) -> tuple[str, str, list[str]]:
        return SERVER_NAME, __version__, []

    def mark_ready(self) -> None:
        self.state = ServerState.READY

    def drain(self) -> None:
        """Readiness turns false and no new model is loaded; loaded models keep serving."""
        self.state = ServerState.DRAINING

    # -- models --------------------------------------------------------------------------------

    async def model_ready(self, name: str) -> bool:
        check_model_id(name)
        if self.cache.is_loaded(name):
            return True
        if self._resolve(name) is None:  # the repository raises NOT_FOUND for unknown names
            raise ModelNotFound(f"model {name!r} is not loaded on this pod")
        return False

    async def model_metadata(self, name: str) -> tuple[Signature, str]:
        entry = await self._acquire(name)
        try:
            model = _model_of(entry)
            return model.signature, model.platform
        finally:
            self.cache.release(entry)

    async def infer(self, request: InferRequest, name: str | None = None) -> InferResponse:
        """Run `request` on its model (`name`, when given, overrides request.model_name)."""
        name = name or request.model_name
        started = time.perf_counter()
        status = "OK"
        self._enter()
        try:
            entry = await self._acquire(name)
            try:
                model = _model_of(entry)
                if is_generative(model):
                    return await self._infer_text(model, name, request)
                batcher = self._batcher(entry, model)
                if batcher is not None:
                    return await batcher.infer(request, name)
                return await self._calls.run(
                    entry.model_id, request.size, _infer, model, name, request
                )
            finally:
                self.cache.release(entry)
        except MeshError as exc:
            status = self._status_label(exc)
            raise
        except asyncio.CancelledError:
            status = "CANCELLED"
            raise
        finally:
            self._leave()
            if self._metrics is not None:
                elapsed = time.perf_counter() - started if status == "OK" else None
                self._metrics.observe_request(name, status, elapsed)

    # -- generative models ---------------------------------------------------------------------

    async def _infer_text(self, model: Any, name: str, request: InferRequest) -> InferResponse:
        """ModelInfer on a generative model: the whole text in one response."""
        text_request = decode_text_request(request)
        echo = text_request.echo and isinstance(text_request.prompt, str)
        parts = [str(text_request.prompt)] if echo else []
        last = None
        async for chunk in self._stream(model, name, text_request):
            parts.append(chunk.text)
            last = chunk
        return text_response(request, name, "".join(parts), last, True)

    async def generate(self, name: str, prompt: TextPrompt, params: SamplingParams) -> Generation:
        """Start generating on model `name`; iterate the result, `aclose` it to stop early.

        Errors a client caused (unknown model, not generative, bad prompt or parameters) are
        raised here, before any text, so that a protocol can still answer with a status.
        """
        self._enter()
        try:
            entry = await self._acquire(name)
        except BaseException:
            self._leave()
            raise
        try:
            model: Any = _model_of(entry)
            if not is_generative(model):
                raise InvalidRequest(f"model {name!r} is not a generative model")
            text = prompt if isinstance(prompt, str) else model.chat_prompt(prompt)
            ids = model.encode(text)
            model.check(ids, params)
            stream = model.stream(ids, params)
        except BaseException:
            self.cache.release(entry)
            self._leave()
            raise
        return Generation(self, entry, name, stream, model)

    async def stream_infer(
        self, request: InferRequest, name: str | None = None
    ) -> AsyncIterator[InferResponse]:
        """One request on ModelStreamInfer: a generative model's text as it comes (when the
        request asks to stream), else one response."""
        name = name or request.model_name
        check_model_id(name)
        entry = self.cache.acquire(name)
        generative = entry is not None and is_generative(entry.model)
        if entry is not None:
            self.cache.release(entry)
        if entry is None:
            # Load it (or fail) the way ModelInfer would, then look again.
            got = await self._acquire(name)
            generative = is_generative(got.model)
            self.cache.release(got)
        if not generative:
            yield await self.infer(request, name)
            return
        text_request = decode_text_request(request)
        if not text_request.stream:
            yield await self.infer(request, name)
            return
        generation = await self.generate(name, text_request.prompt, text_request.params)
        try:
            if text_request.echo and isinstance(text_request.prompt, str):
                yield text_response(request, name, text_request.prompt, None, False)
            async for chunk in generation:
                final = chunk.finish_reason is not None
                if chunk.text or final:
                    yield text_response(request, name, chunk.text, chunk, final)
        finally:
            await generation.aclose()

    async def _stream(self, model: Any, name: str, request: TextRequest) -> AsyncIterator[Chunk]:
        prompt = request.prompt
        ids = model.encode(prompt if isinstance(prompt, str) else model.chat_prompt(prompt))
        model.check(ids, request.params)
        stream = model.stream(ids, request.params)
        try:
            async for chunk in stream:
                if chunk.stats is not None:
                    self._observe_generation(name, chunk.stats)
                yield chunk
        finally:
            stream.cancel()

    def _observe_generation(self, name: str, stats: Stats) -> None:
        if self._metrics is not None:
            self._metrics.observe_generation(name, stats)

    async def load(
        self,
        model_id: str,
        path: str,
        format: str = "",
        options: Mapping[str, str] | None = None,
        storage: StorageRef | None = None,
    ) -> LoadOutcome:
        """Load from a local path, or from `storage` through the pod's puller. `options` are
        the runtime's."""
        self._refuse_if_draining()
        check_model_id(model_id)
        options = dict(options or {})
        base = options.pop(BASE_OPTION, None)
        present = self.cache.source_of(model_id)
        if present is not None:  # loaded or loading: share it, pull nothing
            return await self.cache.load(present, retry_failed=True)
        demoted = self.cache.demoted_source(model_id)
        if demoted is not None:
            other_format = bool(format) and format != demoted.format
            pulled_from = self._pulled.get(model_id)  # None: not pulled (a local path)
            other_storage = bool(
                pulled_from is not None and storage and storage.path and storage != pulled_from
            )
            if other_format or other_storage or options != dict(demoted.options):
                await self.cache.unload(model_id)  # registered anew: not the copy it keeps
                demoted = None
        if demoted is not None:  # in the host tier: a promotion, with no pull
            return await self._load_source(demoted, retry_failed=True)
        if path:
            source = source_for(model_id, Path(path), self.runtimes, format, options, base)
            return await self._load_source(source, retry_failed=True)
        if storage is None or not storage.path:
            raise InvalidRequest(f"model {model_id!r}: give a path or a storage_path")
        if self.artifacts is None:
            raise InvalidRequest(
                f"model {model_id!r}: this pod has no puller (--puller) to fetch {storage}"
            )
        pull = self._pulls.get(model_id)
        if pull is not None and pull.storage != storage:
            # The model registered anew meanwhile: its old pull ends first (the puller keeps
            # one artifact per model), then this load pulls what it was given.
            await asyncio.wait([pull.task])
            pull = self._pulls.get(model_id)
            if pull is not None and pull.storage != storage:
                pull = None
        if pull is None:
            pulling = self._pull(self.artifacts, model_id, storage)
            pull = self._pulls[model_id] = _Pull(asyncio.create_task(pulling), storage)
            pull.task.add_done_callback(lambda _: self._done_with(model_id, pull))
        pull.users += 1
        try:
            local = await asyncio.shield(pull.task)
            source = source_for(model_id, Path(local), self.runtimes, format, options, base)
            return await self._load_source(source, retry_failed=True)
        finally:
            self._done_with(model_id, pull)

    async def _pull(self, artifacts: ArtifactSource, model_id: str, storage: StorageRef) -> str:
        releasing = self._releases.get(model_id)
        if releasing is not None:  # let go just now (an unload): the release goes first
            await asyncio.shield(releasing)
        local = await artifacts.pull(model_id, storage)
        self._pulled[model_id] = storage
        return local

    def _done_with(self, model_id: str, pull: _Pull) -> None:
        """A load is done with `pull` (loaded, failed, given up), or the pull itself ended."""
        pull.users -= 1
        if pull.users:
            return
        newer = self._pulls.get(model_id)
        if newer is pull:
            del self._pulls[model_id]
            newer = None
        if not pull.task.cancelled():
            pull.task.exception()  # its loads had it; with none left, it is not logged again
        if newer is None and not self.cache.on_pod(model_id):  # else the newer pull's to give
            self._release(model_id)  # nobody loaded from it: a no-op unless the pull succeeded

    async def _load_source(self, source: ModelSource, *, retry_failed: bool = False) -> LoadOutcome:
        """Load a model; an adapter's base first, on this pod, from this pod's repository."""
        if source.base is not None and not self.cache.is_loaded(source.base):
            base = self.cache.source_of(source.base) or self._resolve_base(source)
            await self._load_source(base)
        return await self.cache.load(source, retry_failed=retry_failed)

    def _resolve_base(self, source: ModelSource) -> ModelSource:
        base = source.base
        assert base is not None
        try:
            found = self._resolve(base)
        except ModelNotFound:
            found = None
        if found is None:
            raise ModelNotReady(
                f"adapter {source.model_id!r}: its base model {base!r} is not loaded on this pod "
                "and is not in its model directory; load the base first"
            )
        return found

    def _release(self, model_id: str) -> None:
        """The model left the pod (both tiers): its artifact may go from the puller's disk."""
        if model_id in self._pulled and self.artifacts is not None:
            del self._pulled[model_id]
            task = asyncio.create_task(self._release_quietly(model_id))
            self._releases[model_id] = task

            def done(_: asyncio.Task[None]) -> None:
                if self._releases.get(model_id) is task:
                    del self._releases[model_id]

            task.add_done_callback(done)

    async def _release_quietly(self, model_id: str) -> None:
        try:
            await self.artifacts.release(model_id)  # type: ignore[union-attr]
        except Exception as exc:
            log.warning("could not release the artifact of %s: %s", model_id, exc)

    async def unload(self, model_id: str) -> int | None:
        check_model_id(model_id)
        return await self.cache.unload(model_id)

    def status(self) -> CacheView:
        return self.cache.view()

    async def aclose(self) -> None:
        pulls = [p.task for p in self._pulls.values()]
        for task in pulls:
            task.cancel()
        await asyncio.gather(*pulls, return_exceptions=True)
        for model_id in list(self._batchers):
            self._drop_batcher(model_id)
        await self.cache.aclose()
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- internals -----------------------------------------------------------------------------

    async def _acquire(self, name: str) -> CachedModel:
        entry = self.cache.acquire(name)
        if entry is not None:
            return entry
        check_model_id(name)
        self._refuse_if_draining()
        for _ in range(_ACQUIRE_ATTEMPTS):
            source = self._resolve(name)
            if source is None:
                # Not in the repository: only the control API can load it, and it has not.
                failure = self.cache.failure(name)
                if failure is not None:
                    raise failure.kind(failure.error)
                raise ModelNotFound(f"model {name!r} is not loaded on this pod")
            await self._load_source(source)
            entry = self.cache.acquire(name)
            if entry is not None:
                return entry
        raise ModelNotReady(f"model {name!r} was evicted as soon as it loaded; retry")

    def _batcher(self, entry: CachedModel, model: LoadedModel) -> Batcher | None:
        """The model's batcher when its options turn batching on (docs: mesh.pod.batching)."""
        known = self._batchers.get(entry.model_id)
        if known is not None and known[0] is model:
            return known[1]
        source = entry.source
        options = {**source.config.options, **source.options}
        policy = BatchPolicy.from_options(entry.model_id, options)
        observe = self._metrics.batch_rows.observe if self._metrics is not None else None
        batcher = None if policy is None else Batcher(model, policy, self._pool, observe)
        self._batchers[entry.model_id] = (model, batcher)
        return batcher

    def _drop_batcher(self, model_id: str) -> None:
        self._calls.forget(model_id)
        known = self._batchers.pop(model_id, None)
        if known is not None and known[1] is not None:
            known[1].aclose()

    def _resolve(self, name: str) -> ModelSource | None:
        """The source for `name`: the repository's, else the host tier's (a request for a
        demoted model promotes it); None: only the control API can load it."""
        if self.repository is not None:
            return self.repository.resolve(name)
        return self.cache.demoted_source(name)

    def _refuse_if_draining(self) -> None:
        if self.state is ServerState.DRAINING:
            raise Unavailable("the pod is draining and takes no new models")

    def _enter(self) -> None:
        if self._metrics is not None:
            self._metrics.in_flight.inc()

    def _leave(self) -> None:
        if self._metrics is not None:
            self._metrics.in_flight.dec()


TextPrompt = str | Sequence[Mapping[str, Any]]  # a prompt, or chat messages


class Generation:
    """A generation in progress: its chunks, in order; `aclose` stops it (client gone).

    Holds the model in use (so it is not evicted) until the last chunk or `aclose`.
    """

    def __init__(
        self, plane: DataPlane, entry: CachedModel, name: str, stream: Any, model: Any
    ) -> None:
        self._plane = plane
        self._entry: CachedModel | None = entry
        self.name = name
        self.model = model
        self._stream = stream
        self._started = time.perf_counter()
        self._status = "OK"

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[Chunk]:
        try:
            async for chunk in self._stream:
                if chunk.stats is not None:
                    self._plane._observe_generation(self.name, chunk.stats)
                yield chunk
        except MeshError as exc:
            self._status = self._plane._status_label(exc)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            self._status = "CANCELLED"
            raise
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        self._stream.cancel()
        entry, self._entry = self._entry, None
        if entry is None:
            return
        self._plane.cache.release(entry)
        self._plane._leave()
        if self._plane._metrics is not None:
            ok = self._status == "OK"
            elapsed = time.perf_counter() - self._started if ok else None
            self._plane._metrics.observe_request(self.name, self._status, elapsed)


def _model_of(entry: CachedModel) -> LoadedModel:
    model = entry.model
    if model is None:  # cannot happen while the entry is acquired; a clear error if it does
        raise ModelNotReady(f"model {entry.model_id!r} is not loaded")
    return model


def _infer(model: LoadedModel, name: str, request: InferRequest) -> InferResponse:
    """Decode, predict and encode, in a worker thread."""
    return run_one(model, name, request, decode_request(request, model.signature))
