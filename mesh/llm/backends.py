"""Where the HTTP routes for generative models (mesh.llm.openai) get their text from.

A `TextBackend` opens a generation and lists the generative models. Two implementations:

- `PodBackend`: a pod's own data plane (a standalone pod, `mesh serve`'s pods);
- `RouterBackend`: the router core, which forwards each generation as a ModelStreamInfer
  request (text_input, stream, sampling_parameters; chat messages as JSON with the request
  parameter `mesh_chat`) through the miss path to a pod, and reads the responses back as
  chunks.

`open` raises a client's mistakes (unknown model, bad parameters, a prompt too long) before
the first chunk, so a route can still answer them with a status; after that, an error ends the
iteration. Closing the generation (`aclose`) stops it on the pod.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from mesh.errors import MeshError
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.grpcstatus import error_class_named
from mesh.llm.chunks import Chunk, Stats
from mesh.llm.params import SamplingParams
from mesh.llm.protocol import CHAT_PARAMETER, GENERATIVE_FORMAT, TEXT_INPUT, TEXT_OUTPUT

Prompt = str | list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class ModelCard:
    id: str
    base: str | None  # an adapter's base model
    created: int


class OpenGeneration(Protocol):
    def __aiter__(self) -> AsyncIterator[Chunk]: ...

    async def aclose(self) -> None: ...


class TextBackend(Protocol):
    async def open(self, model: str, prompt: Prompt, params: SamplingParams) -> OpenGeneration: ...

    async def models(self) -> list[ModelCard]: ...


class PodBackend:
    def __init__(self, plane: Any) -> None:
        self._plane = plane

    async def open(self, model: str, prompt: Prompt, params: SamplingParams) -> OpenGeneration:
        generation: OpenGeneration = await self._plane.generate(model, prompt, params)
        return generation

    async def models(self) -> list[ModelCard]:
        cards: dict[str, ModelCard] = {}
        view = self._plane.status()
        for m in view.models:
            source = self._plane.cache.source_of(m.model_id)
            if source is not None and source.format == GENERATIVE_FORMAT:
                cards[m.model_id] = ModelCard(m.model_id, source.base, int(m.loaded_at))
        repository = self._plane.repository
        if repository is not None:
            for name in repository.names():
                if name in cards:
                    continue
                try:
                    source = repository.resolve(name)
                except MeshError:
                    continue
                if source.format == GENERATIVE_FORMAT:
                    created = int(source.file.stat().st_mtime)
                    cards[name] = ModelCard(name, source.base, created)
        return sorted(cards.values(), key=lambda c: c.id)


class RouterBackend:
    def __init__(self, router: Any, timeout: float | None = None) -> None:
        self._router = router
        self._timeout = timeout

    async def open(self, model: str, prompt: Prompt, params: SamplingParams) -> OpenGeneration:
        model_id = self._router.resolve(model)
        data = _stream_request(model, prompt, params).SerializeToString()
        messages = self._router.stream(data, model_id, self._timeout)
        generation = _RoutedGeneration(messages)
        await generation.first()  # errors before any text are raised here
        return generation

    async def models(self) -> list[ModelCard]:
        return sorted(
            (
                ModelCard(r.model_id, r.base or None, int(r.registered_at))
                for r in self._router.mirror.models.values()
                if r.format == GENERATIVE_FORMAT
            ),
            key=lambda c: c.id,
        )


def _stream_request(model: str, prompt: Prompt, params: SamplingParams) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    text = prompt if isinstance(prompt, str) else json.dumps(prompt)
    request.inputs.add(name=TEXT_INPUT, datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        text.encode()
    )
    request.inputs.add(name="stream", datatype="BOOL", shape=[1]).contents.bool_contents.append(
        True
    )
    sampling = {
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "seed": params.seed,
        "stop": list(params.stop),
        "ignore_eos": params.ignore_eos,
    }
    request.inputs.add(
        name="sampling_parameters", datatype="BYTES", shape=[1]
    ).contents.bytes_contents.append(json.dumps(sampling).encode())
    if not isinstance(prompt, str):
        request.parameters[CHAT_PARAMETER].bool_param = True
    return request


class _RoutedGeneration:
    def __init__(self, messages: AsyncIterator[bytes]) -> None:
        self._messages = messages
        self._pending: Chunk | None = None
        self._done = False

    async def first(self) -> None:
        try:
            self._pending = await self._next()
        except BaseException:
            await self.aclose()
            raise

    async def _next(self) -> Chunk | None:
        try:
            data = await self._messages.__anext__()
        except StopAsyncIteration:
            return None
        response = pb.ModelStreamInferResponse.FromString(data)
        if response.error_message:
            status = response.infer_response.parameters.get("mesh_status")
            name = status.string_param if status is not None else "UNKNOWN"
            # The pod's error, passed on as it came (the HTTP routes answer its status).
            raise error_class_named(name)(response.error_message)
        return _chunk_of(response.infer_response)

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[Chunk]:
        try:
            chunk, self._pending = self._pending, None
            while chunk is not None:
                yield chunk
                if chunk.finish_reason is not None:
                    return
                chunk = await self._next()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            close = getattr(self._messages, "aclose", None)
            if close is not None:
                await close()


def _chunk_of(response: pb.ModelInferResponse) -> Chunk:
    text = ""
    for i, tensor in enumerate(response.outputs):
        if tensor.name == TEXT_OUTPUT and i < len(response.raw_output_contents):
            raw = response.raw_output_contents[i]
            text = raw[4:].decode("utf-8", "replace") if len(raw) >= 4 else ""
    params = response.parameters
    reason = params["finish_reason"].string_param if "finish_reason" in params else None
    stats = None
    if reason:
        stats = Stats(
            prompt_tokens=int(params["prompt_tokens"].int64_param),
            completion_tokens=int(params["completion_tokens"].int64_param),
            queue_seconds=0.0,
            first_token_seconds=0.0,
            decode_seconds=0.0,
        )
    return Chunk(text, (), reason or None, stats)


def now() -> int:
    return int(time.time())
