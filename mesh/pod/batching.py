"""Adaptive batching: concurrent requests for one model merged into one framework call.

A model opts in with its options (in mesh.json's `options` or its registration's):

    {"options": {"batch.max_size": "32", "batch.max_delay_ms": "2"}}

- `batch.max_size`: the most rows one framework call takes (the batch dimension, dim 0). Set it
  to turn batching on; off by default.
- `batch.max_delay_ms` (default 0): how long the first request of a batch may wait for others.
  With 0 the batcher adds no wait at all: a request runs at once when a worker is free, and the
  requests that arrive while every worker is busy are merged into the next call. Concurrency
  makes the batches, so a lone client pays nothing and a busy model gets large calls.
- `batch.concurrency` (default 2): framework calls of this model in flight at once.

Requests are merged only when they would decode to the same thing but for their rows: the same
inputs with the same datatypes and trailing dimensions, and the same outputs asked for. A
request that is larger than `max_size`, or whose inputs disagree on their first dimension, runs
alone. Each request is decoded (and so checked) by itself before it joins a batch, so one
client's bad tensor fails only its own request; a framework error fails every request of that
call, each with the model's error. A request whose caller gave up while it waited is dropped
from its batch. Every request keeps its own acquisition of the model for the whole time, so a
model is never evicted under a queued request.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from mesh.errors import InvalidRequest, MeshError, RuntimeFailure, Unavailable
from mesh.inference import InferRequest, InferResponse
from mesh.pod.codec import DecodedRequest, decode_request, encode_response
from mesh.runtimes.base import LoadedModel

T = TypeVar("T")

OPTION_PREFIX = "batch."
_KEYS = {"batch.max_size", "batch.max_delay_ms", "batch.concurrency"}


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_size: int
    max_delay: float = 0.0  # seconds
    concurrency: int = 2

    @classmethod
    def from_options(cls, model_id: str, options: Mapping[str, str]) -> BatchPolicy | None:
        """The policy the options ask for; None when batching is off. InvalidRequest names a
        bad value."""
        mine = {k: v for k, v in options.items() if k.startswith(OPTION_PREFIX)}
        unknown = set(mine) - _KEYS
        if unknown:
            raise InvalidRequest(
                f"model {model_id!r}: unknown batching options {sorted(unknown)}; "
                f"the batcher takes {sorted(_KEYS)}"
            )
        if "batch.max_size" not in mine:
            if mine:
                raise InvalidRequest(f"model {model_id!r}: batching options need batch.max_size")
            return None

        def number(key: str, default: float, low: float, high: float) -> float:
            raw = mine.get(key)
            if raw is None:
                return default
            try:
                value = float(raw)
            except ValueError:
                value = float("nan")
            if not low <= value <= high:  # also refuses NaN
                raise InvalidRequest(
                    f"model {model_id!r}: {key} must be a number from {low:g} to {high:g}, "
                    f"not {raw!r}"
                )
            return value

        return cls(
            max_size=int(number("batch.max_size", 0, 1, 1 << 20)),
            max_delay=number("batch.max_delay_ms", 0, 0, 10_000) / 1000,
            concurrency=int(number("batch.concurrency", 2, 1, 256)),
        )


async def in_worker(executor: Executor, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a worker of `executor`. A caller cancelled meanwhile is cancelled only
    once the call has ended: whoever holds a model around it keeps the hold for as long as
    a framework call may still use the model (no eviction, demotion or close under it). A
    call still queued for a worker when its caller is cancelled never runs: a request whose
    client gave up (its deadline passed in the queue of an overloaded pod) costs no work."""
    call = executor.submit(fn, *args)
    future = asyncio.wrap_future(call)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        if call.cancel():  # not started, and now it never will
            raise
        while not future.done():  # the call runs on: so does the caller's hold
            try:
                await asyncio.wait([future])
            except asyncio.CancelledError:
                continue
        raise


def runtime_options(options: Mapping[str, str]) -> dict[str, str]:
    """The options meant for the runtime: all but the batcher's."""
    return {k: v for k, v in options.items() if not k.startswith(OPTION_PREFIX)}


@dataclass(slots=True)
class _Item:
    request: InferRequest
    name: str
    decoded: DecodedRequest
    rows: int
    future: asyncio.Future[InferResponse]
    queued_at: float
    call: asyncio.Task[None] | None = None  # the framework call it went into


class Batcher:
    """The batching queue of one loaded model. Used only on the event loop."""

    def __init__(
        self,
        model: LoadedModel,
        policy: BatchPolicy,
        executor: Executor,
        observe: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.policy = policy
        self._executor = executor
        self._observe = observe
        self._clock = clock
        self._queues: dict[tuple[Any, ...], deque[_Item]] = {}
        self._running = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def infer(self, request: InferRequest, name: str) -> InferResponse:
        loop = asyncio.get_running_loop()
        # Decoded in a worker, as every request is: typed contents and BYTES cost per element.
        decoded = await in_worker(self._executor, decode_request, request, self.model.signature)
        rows = _rows_of(decoded)
        if rows is None or rows > self.policy.max_size:
            return await in_worker(self._executor, run_one, self.model, name, request, decoded)
        item = _Item(request, name, decoded, rows, loop.create_future(), self._clock())
        self._queues.setdefault(_key_of(decoded), deque()).append(item)
        self._kick()
        try:
            return await item.future  # cancelling it takes the request out of its batch
        except asyncio.CancelledError:
            if item.call is not None:
                # Already in a framework call: keep the caller's hold on the model until the
                # call is over, so that it is neither evicted nor demoted under the call.
                await asyncio.shield(item.call)
            raise

    def _kick(self) -> None:
        """Start framework calls while a worker is free and requests wait: the queue waiting
        longest first, past any whose batch may still wait for more (batch.max_delay_ms)."""
        while self._running < self.policy.concurrency:
            now = self._clock()
            ready, wake = None, None
            for key in self._by_age():
                queue = self._queues[key]
                waited = now - queue[0].queued_at
                short = sum(i.rows for i in queue) < self.policy.max_size
                if short and waited < self.policy.max_delay:  # may wait for more
                    left = self.policy.max_delay - waited
                    wake = left if wake is None else min(wake, left)
                    continue
                ready = key
                break
            if ready is None:
                if wake is not None:
                    self._wake_in(wake)
                return
            items = self._take(ready)
            if not items:
                continue
            self._running += 1
            task = asyncio.get_running_loop().create_task(self._run(items))
            for item in items:
                item.call = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _by_age(self) -> list[tuple[Any, ...]]:
        """The queues by how long their first live request has waited; empty ones dropped."""
        heads = []
        for key in list(self._queues):
            queue = self._queues[key]
            while queue and queue[0].future.done():  # its caller gave up
                queue.popleft()
            if not queue:
                del self._queues[key]
                continue
            heads.append((queue[0].queued_at, key))
        heads.sort(key=lambda head: head[0])
        return [key for _, key in heads]

    def _take(self, key: tuple[Any, ...]) -> list[_Item]:
        queue = self._queues[key]
        items: list[_Item] = []
        rows = 0
        while queue and rows + queue[0].rows <= self.policy.max_size:
            item = queue.popleft()
            if not item.future.done():
                items.append(item)
                rows += item.rows
        if not queue:
            del self._queues[key]
        return items

    def _wake_in(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        if self._timer is not None:
            if self._timer.when() <= loop.time() + delay:
                return
            self._timer.cancel()

        def wake() -> None:
            self._timer = None
            self._kick()

        self._timer = loop.call_later(delay, wake)

    async def _run(self, items: list[_Item]) -> None:
        try:
            live = [i for i in items if not i.future.done()]
            if not live:
                return
            if self._observe is not None:
                self._observe(sum(i.rows for i in live))
            loop = asyncio.get_running_loop()
            try:
                answers = await loop.run_in_executor(self._executor, _run_batch, self.model, live)
            except BaseException as exc:
                error = exc if isinstance(exc, Exception) else RuntimeFailure("batch cancelled")
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(error)
                if not isinstance(exc, Exception):
                    raise
                return
            for item, answer in zip(live, answers, strict=True):
                if not item.future.done():
                    item.future.set_result(answer)
        finally:
            self._running -= 1
            self._kick()

    def aclose(self) -> None:
        """Fail whatever still waits (the pod is stopping)."""
        if self._timer is not None:
            self._timer.cancel()
        for queue in self._queues.values():
            for item in queue:
                if not item.future.done():
                    item.future.set_exception(Unavailable("the pod is stopping"))
        self._queues.clear()


def _rows_of(decoded: DecodedRequest) -> int | None:
    """The batch dimension every input shares, or None when they do not share one."""
    rows = {a.shape[0] if a.ndim else None for a in decoded.inputs.values()}
    if len(rows) != 1:
        return None
    (n,) = rows
    return n if n else None


def _key_of(decoded: DecodedRequest) -> tuple[Any, ...]:
    """Requests with equal keys decode to arrays that concatenate along dim 0."""
    inputs = tuple((name, a.dtype.str, a.shape[1:]) for name, a in sorted(decoded.inputs.items()))
    return (decoded.outputs, inputs)


def _predict(model: LoadedModel, name: str, decoded: DecodedRequest) -> Mapping[str, Any]:
    try:
        results = model.predict(decoded.inputs, decoded.outputs)
    except MeshError:
        raise
    except Exception as exc:
        raise RuntimeFailure(f"model {name!r} failed: {type(exc).__name__}: {exc}") from exc
    missing = [o for o in decoded.outputs if o not in results]
    if missing:
        raise RuntimeFailure(f"model {name!r} returned no outputs {missing}")
    return results


def run_one(
    model: LoadedModel, name: str, request: InferRequest, decoded: DecodedRequest
) -> InferResponse:
    """Predict and encode one decoded request, in a worker thread (batched or not)."""
    return encode_response(request, name, _predict(model, name, decoded), decoded.outputs)


def _run_batch(model: LoadedModel, items: list[_Item]) -> list[InferResponse]:
    """One framework call for every item, split back by rows; in a worker thread."""
    if len(items) == 1:
        item = items[0]
        return [run_one(model, item.name, item.request, item.decoded)]
    first = items[0]
    merged = DecodedRequest(
        inputs={
            n: np.concatenate([i.decoded.inputs[n] for i in items]) for n in first.decoded.inputs
        },
        outputs=first.decoded.outputs,
    )
    results = _predict(model, first.name, merged)
    total = sum(i.rows for i in items)
    for output in merged.outputs:
        shape = np.shape(results[output])
        if not shape or shape[0] != total:
            raise RuntimeFailure(
                f"model {first.name!r}: output {output!r} has shape {list(shape)} for a batch of "
                f"{total} rows; its outputs have no batch dimension, so turn batching off"
            )
    answers = []
    start = 0
    for item in items:
        end = start + item.rows
        part = {o: np.asarray(results[o])[start:end] for o in merged.outputs}
        answers.append(encode_response(item.request, item.name, part, merged.outputs))
        start = end
    return answers
