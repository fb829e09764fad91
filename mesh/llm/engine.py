"""Token generation for one causal LM, with concurrent requests batched step by step.

One engine thread per loaded model owns the model and runs a loop: admit waiting requests (each
prefilled together, then merged into the running batch), then one decode step for every running
sequence in a single forward pass, then hand each sequence its token. A request joins at the
next step and leaves as soon as it ends, so short requests never wait for long ones: this is
step-wise (iteration-level) continuous batching, as Orca describes it, over Hugging Face's own
KV cache. The batch's cache is one tensor per layer, left-padded, with an attention mask and
per-row positions; joining pads and concatenates, leaving selects rows and trims the padding
no row needs. Prefills are not batched with each other: a prompt costs one forward of its own,
which keeps the cache exact and the code small; long prompts therefore delay the running
sequences' next token by one prefill each.

Admission is bounded twice: at most `max_batch` sequences run at once, and the tokens they may
reach (prompt + max_tokens) must fit the KV-cache budget the model was charged for. What does
not fit waits in FIFO order.

Cancellation is a flag read before every step: a request whose client went away leaves the
batch before the next forward pass, so at most one more token is computed for it.

Errors: a failed forward pass fails every sequence in it (RuntimeFailure) and empties the batch;
the engine keeps serving. Events reach their consumers through `emit`, called on the engine
thread; `AsyncStream` hands them to an event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mesh.errors import InvalidRequest, MeshError, RuntimeFailure, Unavailable
from mesh.llm.chunks import Chunk, Stats
from mesh.llm.params import SamplingParams

log = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch


Emit = Callable[[Chunk | BaseException], None]


@dataclass(eq=False)
class Sequence_:
    prompt: list[int]
    params: SamplingParams
    adapter: str | None
    emit: Emit
    reserve: int  # tokens of KV cache this sequence may reach
    generator: Any = None
    generated: list[int] = field(default_factory=list)
    sent: int = 0  # characters of text already emitted
    cancelled: bool = False
    submitted: float = field(default_factory=time.perf_counter)
    admitted: float = 0.0
    first: float = 0.0
    done: bool = False


class Engine:
    """Batches the generation requests of one model.

    >>> engine = Engine(model, tokenizer, max_batch=8, kv_tokens=4096, name="llama")
    >>> engine.start()
    >>> seq = engine.submit(tokenizer.encode("hello"), SamplingParams(), None, print)
    >>> engine.cancel(seq)
    >>> engine.close()
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str,
        max_batch: int,
        kv_tokens: int,
        context: int,
        eos_ids: Sequence[int],
        device: str = "cpu",
        batchable: bool = True,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.max_batch = max_batch if batchable else 1
        self.kv_tokens = kv_tokens
        self.context = context
        self.eos_ids = frozenset(eos_ids)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = pad if isinstance(pad, int) else 0  # masked out: any id will do
        self.device = device
        self.adapters: set[str] = set()  # adapters attached to this base
        self._cond = threading.Condition()
        self._pending: deque[Sequence_] = deque()
        self._calls: list[tuple[Callable[[Engine], Any], concurrent.futures.Future[Any]]] = []
        self._rows: list[Sequence_] = []
        self._cache: Any = None
        self._mask: Any = None
        self._reserved = 0
        self._closed = False
        self.tokens_generated = 0  # every token this engine produced, for tests and debugging
        # transformers 5.x renamed the forward's past_key_values to cache.
        self._cache_kw = "past_key_values"
        try:
            if "cache" in inspect.signature(model.forward).parameters:
                self._cache_kw = "cache"
        except (TypeError, ValueError):
            pass
        self._thread = threading.Thread(target=self._run, name=f"mesh-gen-{name}", daemon=True)

    # -- any thread ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def check(self, prompt_len: int, params: SamplingParams) -> int:
        """The tokens a request may reach; InvalidRequest when it can never run."""
        if prompt_len < 1:
            raise InvalidRequest("the prompt is empty")
        if prompt_len >= self.context:
            raise InvalidRequest(
                f"the prompt has {prompt_len} tokens; model {self.name!r} takes at most "
                f"{self.context - 1}"
            )
        reserve = min(prompt_len + params.max_tokens, self.context)
        if reserve > self.kv_tokens:
            raise InvalidRequest(
                f"prompt ({prompt_len} tokens) plus max_tokens ({params.max_tokens}) exceed "
                f"the KV-cache budget of model {self.name!r} ({self.kv_tokens} tokens)"
            )
        return reserve

    def submit(
        self, prompt: list[int], params: SamplingParams, adapter: str | None, emit: Emit
    ) -> Sequence_:
        reserve = self.check(len(prompt), params)
        seq = Sequence_(list(prompt), params, adapter, emit, reserve)
        if not params.greedy:
            import torch

            seq.generator = torch.Generator()
            if params.seed is not None:
                seq.generator.manual_seed(params.seed)
            else:
                seq.generator.seed()
        with self._cond:
            if self._closed:
                raise Unavailable(f"model {self.name!r} is being unloaded")
            self._pending.append(seq)
            self._cond.notify()
        return seq

    def cancel(self, seq: Sequence_) -> None:
        with self._cond:
            seq.cancelled = True
            self._cond.notify()

    def call(self, fn: Callable[[Engine], Any]) -> Any:
        """Run `fn(engine)` on the engine thread between two steps; block for its result."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._cond:
            if self._closed:
                raise Unavailable(f"model {self.name!r} is being unloaded")
            self._calls.append((fn, future))
            self._cond.notify()
        return future.result()

    def busy(self) -> int:
        with self._cond:
            return len(self._pending) + len(self._rows)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)

    # -- the engine thread ---------------------------------------------------------------------

    def _run(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                with self._cond:
                    while not (
                        self._pending
                        or self._rows
                        or self._calls
                        or self._closed
                        or any(s.cancelled for s in self._rows)
                    ):
                        self._cond.wait()
                    if self._closed:
                        break
                    calls, self._calls = self._calls, []
                    admitted = self._admit()
                for fn, future in calls:
                    try:
                        future.set_result(fn(self))
                    except BaseException as exc:
                        future.set_exception(exc)
                self._drop(lambda s: s.cancelled, "cancelled")
                if admitted:
                    self._guarded(functools.partial(self._prefill, admitted), admitted)
                if self._rows:
                    self._guarded(self._step, list(self._rows))
            self._fail_all(Unavailable(f"model {self.name!r} was unloaded"))

    def _admit(self) -> list[Sequence_]:
        admitted: list[Sequence_] = []
        while self._pending and len(self._rows) + len(admitted) < self.max_batch:
            seq = self._pending[0]
            if seq.cancelled:
                self._pending.popleft()
                self._finish(seq, "cancelled")
                continue
            if self._reserved + seq.reserve > self.kv_tokens:
                break
            self._pending.popleft()
            self._reserved += seq.reserve
            seq.admitted = time.perf_counter()
            admitted.append(seq)
        return admitted

    def _guarded(self, fn: Callable[[], None], seqs: list[Sequence_]) -> None:
        """Run a prefill (one sequence) or a step (the whole batch); a failure fails them."""
        try:
            fn()
        except Exception as exc:
            log.exception("generation failed for model %s", self.name)
            error = (
                exc
                if isinstance(exc, MeshError)
                else RuntimeFailure(f"model {self.name!r} failed: {type(exc).__name__}: {exc}")
            )
            for seq in seqs:
                if not seq.done:
                    seq.done = True
                    self._reserved -= seq.reserve
                    _safe_emit(seq, error)
            if any(s.done for s in self._rows):
                # The cache may hold half a step: start the batch afresh.
                for seq in self._rows:
                    if not seq.done:
                        seq.done = True
                        self._reserved -= seq.reserve
                        _safe_emit(seq, error)
                self._rows, self._cache, self._mask = [], None, None

    def _forward(self, rows: list[Sequence_], **kwargs: Any) -> Any:
        if self.adapters:
            kwargs["adapter_names"] = [s.adapter or BASE_ADAPTER for s in rows]
        return self.model(use_cache=True, **kwargs)

    def _prefill(self, seqs: list[Sequence_]) -> None:
        """Prompts admitted together, in one forward pass (left-padded), then into the batch."""
        import torch

        width = max(len(s.prompt) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long, device=self.device)
        mask = torch.zeros((len(seqs), width), dtype=torch.long, device=self.device)
        for i, seq in enumerate(seqs):
            ids[i, width - len(seq.prompt) :] = torch.tensor(seq.prompt, dtype=torch.long)
            mask[i, width - len(seq.prompt) :] = 1
        if len(seqs) == 1:
            out = self._forward(seqs, input_ids=ids)
        else:
            positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
            out = self._forward(seqs, input_ids=ids, attention_mask=mask, position_ids=positions)
        logits = out.logits[:, -1]
        tokens = [self._pick(seq, logits[i]) for i, seq in enumerate(seqs)]
        self._merge(seqs, _cache_of(out), mask)
        for seq, token in zip(seqs, tokens, strict=True):
            self._accept(seq, token)
        self._drop(lambda s: s.done, None)

    def _step(self) -> None:
        import torch

        rows = self._rows
        last = torch.tensor([[s.generated[-1]] for s in rows], dtype=torch.long, device=self.device)
        ones = torch.ones((len(rows), 1), dtype=self._mask.dtype, device=self.device)
        mask = torch.cat([self._mask, ones], dim=1)
        positions = (mask.sum(dim=1, keepdim=True) - 1).to(torch.long)
        out = self._forward(
            rows,
            input_ids=last,
            attention_mask=mask,
            position_ids=positions,
            **{self._cache_kw: self._cache},
        )
        self._cache, self._mask = _cache_of(out), mask
        logits = out.logits[:, -1]
        for i, seq in enumerate(rows):
            if not seq.done:
                self._accept(seq, self._pick(seq, logits[i]))
        self._drop(lambda s: s.done, None)

    def _merge(self, seqs: list[Sequence_], cache: Any, mask: Any) -> None:
        """Add prefilled sequences' cache to the batch's, left-padding the shorter."""
        import torch
        import torch.nn.functional as F

        if self._cache is None or not self._rows:
            self._cache, self._mask, self._rows = cache, mask, list(seqs)
            return
        width, length = self._mask.shape[1], mask.shape[1]
        target = max(width, length)
        for mine, theirs in zip(self._cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_pad(mine.keys, target), _pad(theirs.keys, target)], dim=0)
            mine.values = torch.cat([_pad(mine.values, target), _pad(theirs.values, target)], dim=0)
        self._mask = torch.cat(
            [F.pad(self._mask, (target - width, 0)), F.pad(mask, (target - length, 0))], dim=0
        )
        self._rows.extend(seqs)

    def _drop(self, leaves: Callable[[Sequence_], bool], reason: str | None) -> None:
        """Take the rows that `leaves` out of the batch; trim padding nobody needs."""
        gone = [s for s in self._rows if leaves(s)]
        if not gone:
            return
        for seq in gone:
            if not seq.done:
                self._finish(seq, reason or "cancelled")
        keep = [i for i, s in enumerate(self._rows) if not leaves(s)]
        self._rows = [self._rows[i] for i in keep]
        if not self._rows:
            self._cache = self._mask = None
            return
        import torch

        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        mask = self._mask.index_select(0, index)
        # Columns that are padding in every remaining row can go.
        lead = int((mask.cumsum(dim=1) == 0).sum(dim=1).min())
        mask = mask[:, lead:]
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, lead:]
            layer.values = layer.values.index_select(0, index)[:, :, lead:]
        self._mask = mask

    def _pick(self, seq: Sequence_, logits: Any) -> int:
        import torch

        params = seq.params
        if params.greedy:
            return int(torch.argmax(logits))
        scores = logits.float().cpu() / params.temperature
        if params.top_k and params.top_k < scores.shape[-1]:
            kth = torch.topk(scores, params.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if params.top_p < 1.0:
            ordered, order = torch.sort(scores, descending=True)
            probs = torch.softmax(ordered, dim=-1)
            # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
            cut = (torch.cumsum(probs, dim=-1) - probs) >= params.top_p
            ordered = ordered.masked_fill(cut, float("-inf"))
            scores = torch.full_like(scores, float("-inf")).scatter(0, order, ordered)
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=seq.generator))

    def _accept(self, seq: Sequence_, token: int) -> None:
        now = time.perf_counter()
        if not seq.generated:
            seq.first = now
        seq.generated.append(token)
        self.tokens_generated += 1
        finish: str | None = None
        produced = seq.generated
        if token in self.eos_ids and not seq.params.ignore_eos:
            finish = "stop"
            produced = seq.generated[:-1]
        text = self.tokenizer.decode(produced, skip_special_tokens=True)
        if seq.params.stop:
            hits = [i for i in (text.find(s) for s in seq.params.stop) if i >= 0]
            if hits:
                text = text[: min(hits)]
                finish = "stop"
        if finish is None and (
            len(seq.generated) >= seq.params.max_tokens
            or len(seq.prompt) + len(seq.generated) >= self.context
        ):
            finish = "length"
        if finish is None:
            safe = len(text) - _held_back(text, seq.params.stop)
            if text.endswith("\ufffd"):  # an incomplete multi-byte character
                safe = min(safe, len(text) - 1)
            delta = text[seq.sent : max(safe, seq.sent)]
            seq.sent = max(safe, seq.sent)
            _safe_emit(seq, Chunk(delta, (token,)))
            return
        delta = text[seq.sent :]
        seq.sent = len(text)
        self._finish(seq, finish, delta, (token,))

    def _finish(
        self, seq: Sequence_, reason: str, text: str = "", tokens: tuple[int, ...] = ()
    ) -> None:
        seq.done = True
        if seq.admitted:
            self._reserved -= seq.reserve
        now = time.perf_counter()
        stats = Stats(
            prompt_tokens=len(seq.prompt),
            completion_tokens=len(seq.generated),
            queue_seconds=(seq.admitted or now) - seq.submitted,
            first_token_seconds=(seq.first - seq.submitted) if seq.first else 0.0,
            decode_seconds=(now - seq.first) if seq.first else 0.0,
        )
        _safe_emit(seq, Chunk(text, tokens, reason, stats))

    def _fail_all(self, error: MeshError) -> None:
        with self._cond:
            waiting = list(self._pending)
            self._pending.clear()
            calls, self._calls = self._calls, []
        for seq in itertools.chain(waiting, self._rows):
            if not seq.done:
                seq.done = True
                _safe_emit(seq, error)
        for _, future in calls:
            future.set_exception(error)
        self._rows, self._cache, self._mask = [], None, None


def _cache_of(output: Any) -> Any:
    cache = getattr(output, "past_key_values", None)
    return cache if cache is not None else output.cache


def _pad(tensor: Any, width: int) -> Any:
    import torch.nn.functional as F

    missing = width - tensor.shape[2]
    return F.pad(tensor, (0, 0, missing, 0)) if missing else tensor


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters might begin a stop sequence, and so cannot be sent yet."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                longest = max(longest, n)
                break
    return longest


def _safe_emit(seq: Sequence_, event: Chunk | BaseException) -> None:
    try:
        seq.emit(event)
    except Exception:
        log.exception("delivering a token failed")


class AsyncStream:
    """A request's chunks on an event loop: iterate them; `cancel` when the client goes away.

    >>> stream = AsyncStream(engine)
    >>> stream.start(prompt_ids, params)
    >>> async for chunk in stream: ...
    """

    def __init__(self, engine: Engine, adapter: str | None = None) -> None:
        self._engine = engine
        self._adapter = adapter
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Chunk | BaseException] = asyncio.Queue()
        self._seq: Sequence_ | None = None
        self.finished = False

    def start(self, prompt: list[int], params: SamplingParams) -> None:
        self._seq = self._engine.submit(prompt, params, self._adapter, self._put)

    def _put(self, event: Chunk | BaseException) -> None:
        # A closed loop raises RuntimeError: nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    def cancel(self) -> None:
        if self._seq is not None and not self.finished:
            self._engine.cancel(self._seq)

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[Chunk]:
        try:
            while not self.finished:
                event = await self._queue.get()
                if isinstance(event, BaseException):
                    self.finished = True
                    raise event
                if event.finish_reason is not None:
                    self.finished = True
                yield event
        finally:
            self.cancel()


def collect(
    engine: Engine, prompt: list[int], params: SamplingParams, adapter: str | None
) -> Chunk:
    """Run one request to its end, blocking this (non-engine) thread; all text in one chunk."""
    done = threading.Event()
    parts: list[str] = []
    tokens: list[int] = []
    result: list[Chunk | BaseException] = []

    def emit(event: Chunk | BaseException) -> None:
        if isinstance(event, BaseException):
            result.append(event)
            done.set()
            return
        parts.append(event.text)
        tokens.extend(event.token_ids)
        if event.finish_reason is not None:
            result.append(event)
            done.set()

    engine.submit(prompt, params, adapter, emit)
    done.wait()
    last = result[0]
    if isinstance(last, BaseException):
        raise last
    return Chunk("".join(parts), tuple(tokens), last.finish_reason, last.stats)
