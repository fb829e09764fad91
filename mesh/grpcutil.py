"""gRPC plumbing shared by every mesh server: method tables and the error interceptor.

Services are registered from plain tables of coroutines instead of the generated servicer
base classes, so every handler is typed and the router can later register byte-for-byte
pass-through methods the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import grpc
from grpc import aio

from mesh.errors import MeshError
from mesh.grpcstatus import status_of

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

Handler = Callable[[Any, aio.ServicerContext[Any, Any]], Awaitable[Any]]
if TYPE_CHECKING:
    MethodHandler: TypeAlias = grpc.RpcMethodHandler[Any, Any]  # generic only in the stubs
else:
    MethodHandler = grpc.RpcMethodHandler


def service_handler(
    service: str,
    methods: Mapping[str, tuple[Handler, type[Any], type[Any]]],
    streams: Mapping[str, MethodHandler] | None = None,
) -> grpc.GenericRpcHandler:
    """Register `{method: (coroutine, request type, response type)}` as `service`, and
    streaming methods as given."""
    handlers: dict[str, Any] = {
        name: grpc.unary_unary_rpc_method_handler(
            handler,
            request_deserializer=request_type.FromString,
            response_serializer=response_type.SerializeToString,
        )
        for name, (handler, request_type, response_type) in methods.items()
    }
    handlers.update(streams or {})
    return grpc.method_handlers_generic_handler(service, handlers)


class Undecodable:
    """What a request deserializer returns instead of raising: bytes that are no message of
    the method's type. The handler answers INVALID_ARGUMENT (grpc itself would say UNKNOWN)."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def tolerant(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # DecodeError, RecursionError, UnicodeDecodeError, ...
            return Undecodable(f"the request's bytes are not a valid message: {exc}")

    return tolerant


# Trailing metadata on every status a mesh server answers itself, so that a client can tell it
# from one its gRPC library made (a connection refused, lost, or a server stopping): an
# UNAVAILABLE without it never reached the server's code (mesh.router.grpcpods).
ANSWERED: tuple[tuple[str, str], ...] = (("mesh-answered", "1"),)


def answered(exc: aio.AioRpcError) -> bool:
    """Whether a mesh server's own code answered the call that raised `exc`."""
    return any(key == "mesh-answered" for key, _ in exc.trailing_metadata() or ())


class ErrorInterceptor(aio.ServerInterceptor):
    """Map MeshError to its gRPC status (mesh.grpcstatus's table) and anything unexpected to
    INTERNAL, for every method; a request whose bytes do not decode is INVALID_ARGUMENT, and
    work cancelled under a call that was not is UNAVAILABLE (to retry elsewhere).

    Wrapped handlers are cached per method, so a call costs one dict lookup beyond the handler.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, MethodHandler | None] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[MethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> MethodHandler | None:
        method = handler_call_details.method
        try:
            return self._wrapped[method]
        except KeyError:
            pass
        handler = await continuation(handler_call_details)
        wrapped = _wrap(handler, method) if handler is not None else None
        self._wrapped[method] = wrapped
        return wrapped


def _wrap(handler: MethodHandler, method: str) -> MethodHandler:
    behavior: Any = handler.unary_unary
    if behavior is None:  # only unary methods are served today
        return handler

    async def mapped(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message, ANSWERED)
        try:
            return await behavior(request, context)
        except MeshError as exc:
            await context.abort(status_of(exc), str(exc), ANSWERED)
        except aio.AbortError:
            raise
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the call itself: its client went, or the server stops (UNAVAILABLE)
            # Work cancelled under a call that is not: grpc would answer nothing, and the
            # client wait out its deadline.
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"{method}: its work was cancelled", ANSWERED
            )
        except Exception as exc:
            log.exception("%s failed", method)
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}", ANSWERED)

    return grpc.unary_unary_rpc_method_handler(
        mapped,
        request_deserializer=_tolerant(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )


async def fan_in(
    requests: AsyncIterator[T],
    serve: Callable[[T, Callable[[R], Awaitable[None]]], Coroutine[Any, Any, None]],
) -> AsyncIterator[R]:
    """A bidirectional stream's requests each served at once, `serve(request, put)` putting its
    responses as they come; the responses interleaved in the order they are put. The stream
    ends once the requests have and every request is served; closing it cancels them all."""
    out: asyncio.Queue[R | None] = asyncio.Queue()
    tasks: set[asyncio.Task[None]] = set()

    async def read() -> None:
        try:
            async for request in requests:
                task: asyncio.Task[None] = asyncio.create_task(serve(request, out.put))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            while tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await out.put(None)

    reader = asyncio.create_task(read())
    try:
        while (item := await out.get()) is not None:
            yield item
    finally:
        reader.cancel()
        for task in list(tasks):
            task.cancel()
