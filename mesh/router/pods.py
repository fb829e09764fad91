"""Channels to the pods, pooled one per pod, and the least-busy choice among copies.

Each pod gets one grpc.aio channel (HTTP/2 multiplexes every request over it), created on first
use and closed when the pod leaves the mirror. The router counts its own requests outstanding to
each pod and picks among a model's copies by the power of two choices: two at random, the less
busy one wins, which spreads load almost as well as a global minimum without its herding.

Closing a channel (its pod left the mirror) ends the calls in flight on it not with a gRPC
status but with `asyncio.CancelledError`, and calls begun after it with `UsageError`. Left as
they are, the router's handler would be cancelled and its client left waiting for its deadline;
`pod_left` turns both into UNAVAILABLE, which the router retries on another copy.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc import aio

from mesh.errors import MeshError
from mesh.gen import runtime_pb2 as rpb

log = logging.getLogger(__name__)

# A pod's inference in this process: (serialized ModelInferRequest, model id) -> serialized
# ModelInferResponse, raising MeshError.
LocalInfer = Callable[[bytes, str], Awaitable[bytes]]

INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
METADATA = "/inference.GRPCInferenceService/ModelMetadata"
LOAD = "/mesh.runtime.v1.Runtime/LoadModel"
UNLOAD = "/mesh.runtime.v1.Runtime/UnloadModel"


class PodClient:
    def __init__(self, pod_id: str, address: str, max_message_bytes: int) -> None:
        self.pod_id = pod_id
        self.address = address
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", 20_000),
        ]
        self.channel = aio.insecure_channel(address, options=options)
        # Bytes in, bytes out: the router never decodes a tensor. `infer` is the hot path and
        # is left unwrapped: the router's forward handles a closed channel itself.
        self.infer: Any = self.channel.unary_unary(INFER)
        self.stream: Any = self.channel.stream_stream(STREAM)
        self.metadata = self._guarded(self.channel.unary_unary(METADATA))
        self.load = self._guarded(
            self.channel.unary_unary(
                LOAD,
                request_serializer=rpb.LoadModelRequest.SerializeToString,
                response_deserializer=rpb.LoadModelResponse.FromString,
            )
        )
        self.unload = self._guarded(
            self.channel.unary_unary(
                UNLOAD,
                request_serializer=rpb.UnloadModelRequest.SerializeToString,
                response_deserializer=rpb.UnloadModelResponse.FromString,
            )
        )
        self.outstanding = 0

    def _guarded(self, method: Any) -> Callable[..., Awaitable[Any]]:
        async def call(request: Any, **kwargs: Any) -> Any:
            try:
                return await method(request, **kwargs)
            except (asyncio.CancelledError, aio.UsageError):
                error = pod_left(self.pod_id)
                if error is None:
                    raise
                raise error from None

        return call

    async def aclose(self) -> None:
        await self.channel.close()


class InProcessPodClient(PodClient):
    """A pod in this process (`mesh serve`): inference calls its data plane directly, with no
    loopback hop; the control calls (load, unload, metadata) still go over its gRPC port.

    Errors come back as the AioRpcError a gRPC pod would have answered, so the router's forward
    treats both pods alike.
    """

    def __init__(self, pod_id: str, address: str, max_message_bytes: int, local: LocalInfer):
        super().__init__(pod_id, address, max_message_bytes)
        self._local = local
        self.infer = self._infer_here

    async def _infer_here(
        self,
        data: bytes,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> bytes:
        model_id = next((v for k, v in metadata if k == "mm-model-id"), "")
        try:
            async with asyncio.timeout(timeout):
                return await self._local(data, model_id)
        except TimeoutError:
            raise _status(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        except MeshError as exc:
            raise _status(exc.code, str(exc)) from None
        except Exception as exc:
            log.exception("in-process inference of %s failed", model_id)
            raise _status(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}") from None


def _status(code: grpc.StatusCode, details: str) -> aio.AioRpcError:
    return aio.AioRpcError(code, aio.Metadata(), aio.Metadata(), details)


def pod_left(pod_id: str) -> aio.AioRpcError | None:
    """What a call ended by its channel's closing becomes: UNAVAILABLE, to retry elsewhere.

    None when the caller's own task is being cancelled: that is the client giving up, not the
    pod going away, and the CancelledError must go on.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        return None
    return _status(
        grpc.StatusCode.UNAVAILABLE,
        f"pod {pod_id} left the mesh during the call (its channel closed)",
    )


class PodPool:
    def __init__(self, max_message_bytes: int, rng: random.Random | None = None) -> None:
        self._clients: dict[str, PodClient] = {}
        self._max = max_message_bytes
        self._rng = rng or random.Random()
        self._closing: set[asyncio.Task[None]] = set()
        self._local: dict[str, LocalInfer] = {}

    def serve_in_process(self, pod_id: str, infer: LocalInfer) -> None:
        """Pod `pod_id` runs in this process: forward its inference to `infer`."""
        self._local[pod_id] = infer
        self.forget(pod_id)

    def client(self, pod_id: str, address: str) -> PodClient:
        client = self._clients.get(pod_id)
        if client is None or client.address != address:
            if client is not None:
                self._close_later(client)
            local = self._local.get(pod_id)
            client = self._clients[pod_id] = (
                PodClient(pod_id, address, self._max)
                if local is None
                else InProcessPodClient(pod_id, address, self._max, local)
            )
        return client

    def forget(self, pod_id: str) -> None:
        client = self._clients.pop(pod_id, None)
        if client is not None:
            self._close_later(client)

    def pick(self, candidates: Sequence[PodClient]) -> PodClient:
        """Power of two choices on requests outstanding from this router."""
        if len(candidates) == 1:
            return candidates[0]
        a, b = self._rng.sample(list(candidates), 2)
        return a if a.outstanding <= b.outstanding else b

    def _close_later(self, client: PodClient) -> None:
        task = asyncio.get_running_loop().create_task(client.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self._clients.values()), return_exceptions=True)
        self._clients.clear()
