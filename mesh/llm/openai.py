"""OpenAI-compatible HTTP routes, and the v2 generate extension, over a TextBackend.

Routes (each also under `/openai/v1/`, as KServe serves them):

- `POST /v1/completions`: `prompt` (a string, or a list of one), `max_tokens` (default 16),
  `temperature`, `top_p`, `top_k`, `seed`, `stop`, `stream`, `stream_options.include_usage`;
  `n` and `best_of` only 1; `echo` puts the prompt before the text.
- `POST /v1/chat/completions`: `messages` rendered with the model's chat template;
  `max_completion_tokens` or `max_tokens`.
- `GET /v1/models`, `GET /v1/models/{model}`: the generative models; an adapter names its base
  in `parent` and `root`.
- `POST /v2/models/{model}/generate` and `/generate_stream`: `{"text_input": ..., "parameters":
  {...}}` (parameters may also sit beside text_input) -> `{"model_name", "text_output"}`; the
  stream sends one such object per event.

Streams are server-sent events; the OpenAI ones end with `data: [DONE]`. Errors have OpenAI's
shape, `{"error": {"message", "type", "param", "code"}}`: 400 for a bad request or
parameter, 404 for an unknown model, 429 when no pod has room (RESOURCE_EXHAUSTED), 503 when
the model cannot be served now, 504 past a deadline. An error after the stream began is sent as
one last event with that shape. A client that disconnects stops its generation at the next
token, when its write fails.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import grpc
from aiohttp import web

from mesh.errors import InvalidRequest, MeshError, ModelNotFound
from mesh.grpcstatus import status_of
from mesh.llm.backends import ModelCard, OpenGeneration, Prompt, TextBackend
from mesh.llm.chunks import Chunk
from mesh.llm.params import SamplingParams
from mesh.llm.protocol import check_messages

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PREFIXES = ("/v1", "/openai/v1")
MAX_BODY = 4 * 2**20

_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable"),
    grpc.StatusCode.FAILED_PRECONDITION: (503, "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
}


class Routes(Protocol):
    """What the process's HTTP app offers (mesh.http.app.HttpApp has it)."""

    def add_route(self, method: str, path: str, handler: Handler) -> None: ...


def mount(app: Routes, backend: TextBackend) -> None:
    """Add the OpenAI routes and the v2 generate extension to `app`."""
    api = OpenAIRoutes(backend)
    for prefix in PREFIXES:
        app.add_route("POST", f"{prefix}/completions", api.completions)
        app.add_route("POST", f"{prefix}/chat/completions", api.chat)
        app.add_route("GET", f"{prefix}/models", api.models)
        app.add_route("GET", f"{prefix}/models/{{model}}", api.model)
    app.add_route("POST", "/v2/models/{model}/generate", api.generate)
    app.add_route("POST", "/v2/models/{model}/generate_stream", api.generate_stream)


def error_body(status: int, kind: str, message: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _error_of(exc: BaseException) -> tuple[int, dict[str, Any]]:
    if isinstance(exc, MeshError):
        code = status_of(exc)
        status, kind = _STATUS.get(code, (500, "server_error"))
        name = "model_not_found" if code is grpc.StatusCode.NOT_FOUND else None
        return status, error_body(status, kind, str(exc) or code.name, name)
    return 500, error_body(500, "server_error", f"{type(exc).__name__}: {exc}")


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(doc, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


def _guard(handler: Handler) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _json(error_body(exc.status, "invalid_request_error", exc.reason), exc.status)
        except MeshError as exc:
            status, body = _error_of(exc)
            return _json(body, status)
        except Exception as exc:
            log.exception("%s %s failed", request.method, request.path)
            status, body = _error_of(exc)
            return _json(body, status)

    return guarded


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise InvalidRequest(f"the body is larger than {MAX_BODY} bytes")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise InvalidRequest(f"the body is larger than {MAX_BODY} bytes")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidRequest("the body must be a JSON object")
    return doc


def _model(doc: dict[str, Any]) -> str:
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model is required")
    return model


def _params(doc: dict[str, Any], *, max_key: str = "max_tokens") -> SamplingParams:
    if doc.get("n", 1) != 1 or doc.get("best_of", 1) != 1:
        raise InvalidRequest("only n=1 (and best_of=1) is supported")
    if doc.get("logprobs") not in (None, False, 0):
        raise InvalidRequest("logprobs are not supported")
    raw = dict(doc)
    if max_key != "max_tokens" and doc.get(max_key) is not None:
        raw["max_tokens"] = doc[max_key]
    return SamplingParams.parse(raw)


def _usage(chunk: Chunk | None) -> dict[str, int]:
    stats = chunk.stats if chunk is not None else None
    prompt = stats.prompt_tokens if stats else 0
    completion = stats.completion_tokens if stats else 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _finish(reason: str | None) -> str | None:
    return "stop" if reason == "cancelled" else reason


class _SSE:
    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response

    async def send(self, doc: Any) -> None:
        await self.response.write(
            b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"
        )

    async def done(self) -> None:
        await self.response.write(b"data: [DONE]\n\n")


async def _start_sse(request: web.Request) -> _SSE:
    response = web.StreamResponse(
        status=200,
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
    )
    await response.prepare(request)
    return _SSE(response)


class OpenAIRoutes:
    def __init__(self, backend: TextBackend) -> None:
        self._backend = backend
        self.completions = _guard(self._completions)
        self.chat = _guard(self._chat)
        self.models = _guard(self._models)
        self.model = _guard(self._model)
        self.generate = _guard(self._generate)
        self.generate_stream = _guard(self._generate_stream)

    # -- OpenAI --------------------------------------------------------------------------------

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        doc = await _body(request)
        model = _model(doc)
        prompt = doc.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise InvalidRequest("prompt must be a string (or a list of one string)")
        params = _params(doc)
        generation = await self._backend.open(model, prompt, params)
        ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        echo = prompt if doc.get("echo") else ""

        def choice(text: str, reason: str | None) -> dict[str, Any]:
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": _finish(reason)}

        def envelope(choices: list[Any]) -> dict[str, Any]:
            return {
                "id": ident,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": choices,
            }

        if not doc.get("stream"):
            text, last = await _collect(generation)
            return _json(
                {
                    **envelope([choice(echo + text, last.finish_reason if last else None)]),
                    "usage": _usage(last),
                }
            )
        include_usage = _include_usage(doc)
        sse = await _start_sse(request)

        async def events() -> AsyncIterator[dict[str, Any]]:
            if echo:
                yield envelope([choice(echo, None)])
            last = None
            async for chunk in generation:
                last = chunk
                if chunk.text or chunk.finish_reason:
                    yield envelope([choice(chunk.text, chunk.finish_reason)])
            if include_usage:
                yield {**envelope([]), "usage": _usage(last)}

        return await _pump(sse, generation, events(), openai=True)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        doc = await _body(request)
        model = _model(doc)
        messages = check_messages(doc.get("messages"))
        params = _params(doc, max_key="max_completion_tokens")
        prompt: Prompt = messages
        generation = await self._backend.open(model, prompt, params)
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def envelope(choices: list[Any], kind: str) -> dict[str, Any]:
            return {
                "id": ident,
                "object": kind,
                "created": created,
                "model": model,
                "choices": choices,
            }

        if not doc.get("stream"):
            text, last = await _collect(generation)
            message = {"role": "assistant", "content": text}
            reason = _finish(last.finish_reason if last else None)
            body = envelope(
                [{"index": 0, "message": message, "logprobs": None, "finish_reason": reason}],
                "chat.completion",
            )
            return _json({**body, "usage": _usage(last)})
        include_usage = _include_usage(doc)
        sse = await _start_sse(request)

        async def events() -> AsyncIterator[dict[str, Any]]:
            first = {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
            yield envelope([first], "chat.completion.chunk")
            last = None
            async for chunk in generation:
                last = chunk
                if chunk.text or chunk.finish_reason:
                    delta = {"content": chunk.text} if chunk.text else {}
                    part = {
                        "index": 0,
                        "delta": delta,
                        "logprobs": None,
                        "finish_reason": _finish(chunk.finish_reason),
                    }
                    yield envelope([part], "chat.completion.chunk")
            if include_usage:
                yield {**envelope([], "chat.completion.chunk"), "usage": _usage(last)}

        return await _pump(sse, generation, events(), openai=True)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        cards = await self._backend.models()
        return _json({"object": "list", "data": [_card(c) for c in cards]})

    async def _model(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["model"]
        for card in await self._backend.models():
            if card.id == name:
                return _json(_card(card))
        raise ModelNotFound(f"model {name!r} is not a generative model here")

    # -- v2 generate extension -----------------------------------------------------------------

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        model = request.match_info["model"]
        prompt, params = _generate_request(await _body(request))
        text, last = await _collect(await self._backend.open(model, prompt, params))
        reply: dict[str, Any] = {"model_name": model, "text_output": text}
        if last is not None:
            reply["finish_reason"] = _finish(last.finish_reason)
            reply["usage"] = _usage(last)
        return _json(reply)

    async def _generate_stream(self, request: web.Request) -> web.StreamResponse:
        model = request.match_info["model"]
        prompt, params = _generate_request(await _body(request))
        generation = await self._backend.open(model, prompt, params)
        sse = await _start_sse(request)

        async def events() -> AsyncIterator[dict[str, Any]]:
            async for chunk in generation:
                event: dict[str, Any] = {"model_name": model, "text_output": chunk.text}
                if chunk.finish_reason is not None:
                    event["finish_reason"] = _finish(chunk.finish_reason)
                if chunk.text or chunk.finish_reason:
                    yield event

        return await _pump(sse, generation, events(), openai=False)


def _card(card: ModelCard) -> dict[str, Any]:
    return {
        "id": card.id,
        "object": "model",
        "created": card.created,
        "owned_by": "mesh",
        "parent": card.base,
        "root": card.base or card.id,
    }


def _include_usage(doc: dict[str, Any]) -> bool:
    options = doc.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise InvalidRequest("stream_options must be an object")
    return bool(options.get("include_usage"))


def _generate_request(doc: dict[str, Any]) -> tuple[str, SamplingParams]:
    prompt = doc.get("text_input")
    if not isinstance(prompt, str):
        raise InvalidRequest("text_input must be a string")
    raw = {k: v for k, v in doc.items() if k not in ("text_input", "parameters", "id")}
    parameters = doc.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidRequest("parameters must be an object")
    raw.update(parameters)
    return prompt, SamplingParams.parse(raw)


async def _collect(generation: OpenGeneration) -> tuple[str, Chunk | None]:
    parts: list[str] = []
    last = None
    try:
        async for chunk in generation:
            parts.append(chunk.text)
            last = chunk
    finally:
        await generation.aclose()
    return "".join(parts), last


async def _pump(
    sse: _SSE, generation: OpenGeneration, events: AsyncIterator[dict[str, Any]], *, openai: bool
) -> web.StreamResponse:
    """Send every event; an error mid-way becomes one error event. A client gone stops it."""
    try:
        try:
            async for event in events:
                await sse.send(event)
        except (ConnectionError, RuntimeError):
            raise  # the client went away: nothing more to send
        except Exception as exc:
            if not isinstance(exc, MeshError):
                log.exception("a stream failed")
            _, body = _error_of(exc)
            await sse.send(body)
        if openai:
            await sse.done()
        await sse.response.write_eof()
    except (ConnectionError, RuntimeError) as exc:
        log.info("a client left its stream: %s", exc)
    finally:
        await generation.aclose()
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()
    return sse.response
