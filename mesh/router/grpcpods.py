"""The pod transport over gRPC (mesh.router.transport.PodTransport): a channel per pod.

Each pod gets one grpc.aio channel (HTTP/2 multiplexes every request over it), created on first
use by the pool (mesh.router.pods.PodPool, with `GrpcPods` as its `connect`) and closed when the
pod leaves the mirror. Inference and metadata go as the client's bytes, untouched. A pod that
advertises a frame listener (InstanceRecord.data_address) gets its unary inference over that
instead (`FramePodClient`, mesh.frames: a frame costs the router a fraction of a grpc.aio
call's CPU), and everything else over its channel; a pod that advertises none gets gRPC alone.
With the router's --pod-tls-* settings (mesh.tls) both go over TLS with the router's client
certificate; a pod that refuses it (or whose certificate the router's CA does not sign) fails
the handshake, and its calls fail `Unavailable`.

A pod's record is written by the pod, and its addresses are checked here (mesh.addresses): a
pod whose gRPC address cannot be used gets an `UnreachablePod`, whose every call fails
`Unavailable` naming the pod and the address (the router tries another pod); one whose data
address cannot be used is called over gRPC. Either is logged once, when its client is made.

A pod's status becomes the mesh error of mesh.grpcstatus's table with the pod's message, so the
router passes it on unchanged. Closing a channel (its pod left the mirror) ends the calls in
flight on it not with a gRPC status but with `asyncio.CancelledError`, and calls begun after it
with `UsageError`. Left as they are, the router's handler would be cancelled and its client left
waiting for its deadline; `pod_left` turns both into `Unavailable`, which the router retries on
another copy.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

import grpc
from grpc import aio

from mesh.addresses import BadAddress, parse_address
from mesh.errors import ConnectFailed, DeadlineExceeded, MeshError, PodUnreachable, Unavailable
from mesh.frames import FrameClient
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import runtime_pb2 as rpb
from mesh.grpcstatus import error_class_named, error_from_status
from mesh.grpcutil import answered
from mesh.router.transport import Loaded, LoadRequest, LocalInfer, PodTransport
from mesh.storagewire import to_message
from mesh.tls import ClientCredentials

log = logging.getLogger(__name__)

T = TypeVar("T")

INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
METADATA = "/inference.GRPCInferenceService/ModelMetadata"
LIVE = "/inference.GRPCInferenceService/ServerLive"
LOAD = "/mesh.runtime.v1.Runtime/LoadModel"
UNLOAD = "/mesh.runtime.v1.Runtime/UnloadModel"
# The metadata naming the model a forwarded request is for (the pod serves it under that id).
MODEL_ID_HEADER = "mm-model-id"


def pod_left(pod_id: str) -> Unavailable | None:
    """What a call ended by its channel's closing becomes: Unavailable, to retry elsewhere.

    None when the caller's own task is being cancelled: that is the client giving up, not the
    pod going away, and the CancelledError must go on.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        return None
    return PodUnreachable(f"pod {pod_id} left the mesh during the call (its channel closed)")


class GrpcPodStream:
    """One ModelStreamInfer call to a pod (mesh.router.transport.PodStream)."""

    __slots__ = ("_call", "_pod_id")

    def __init__(self, call: Any, pod_id: str) -> None:
        self._call = call
        self._pod_id = pod_id

    async def read(self) -> bytes | None:
        try:
            message = await self._call.read()
        except aio.AioRpcError as exc:
            raise error_from_status(exc.code(), exc.details() or "") from None
        except (asyncio.CancelledError, aio.UsageError):
            left = pod_left(self._pod_id)  # its pod left and the channel closed
            if left is None:
                raise  # our own client gave up
            raise left from None
        if message is aio.EOF:
            return None
        data: bytes = message
        return data

    def cancel(self) -> None:
        self._call.cancel()


class PodClient:
    """A pod over gRPC (mesh.router.transport.PodTransport); over TLS with `tls`."""

    can_fall_silent = True  # across a network

    def __init__(
        self,
        pod_id: str,
        address: str,
        max_message_bytes: int,
        data_address: str = "",
        *,
        tls: ClientCredentials | None = None,
    ) -> None:
        self.pod_id = pod_id
        self.address = address
        self.data_address = data_address
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", 20_000),
        ]
        if tls is None:
            self.channel = aio.insecure_channel(address, options=options)
        else:
            self.channel = aio.secure_channel(address, tls.grpc, options=options + tls.options())
        # Bytes in, bytes out: the router never decodes a tensor.
        self._infer: Any = self.channel.unary_unary(INFER)
        self._stream: Any = self.channel.stream_stream(STREAM)
        self._metadata: Any = self.channel.unary_unary(METADATA)
        self._live: Any = self.channel.unary_unary(
            LIVE,
            request_serializer=pb.ServerLiveRequest.SerializeToString,
            response_deserializer=pb.ServerLiveResponse.FromString,
        )
        self._load: Any = self.channel.unary_unary(
            LOAD,
            request_serializer=rpb.LoadModelRequest.SerializeToString,
            response_deserializer=rpb.LoadModelResponse.FromString,
        )
        self._unload: Any = self.channel.unary_unary(
            UNLOAD,
            request_serializer=rpb.UnloadModelRequest.SerializeToString,
            response_deserializer=rpb.UnloadModelResponse.FromString,
        )
        self.outstanding = 0

    async def infer(self, data: bytes, model_id: str, timeout: float | None) -> bytes:
        # The hot path: one await of the call, the error mapping only when there is one.
        try:
            response: bytes = await self._infer(
                data, timeout=timeout, metadata=((MODEL_ID_HEADER, model_id),)
            )
            return response
        except aio.AioRpcError as exc:
            raise error_from_status(exc.code(), exc.details() or "") from None
        except (asyncio.CancelledError, aio.UsageError):
            left = pod_left(self.pod_id)  # the pod left the mirror and its channel closed
            if left is None:
                raise
            raise left from None

    def stream(self, data: bytes, model_id: str, timeout: float | None) -> GrpcPodStream:
        call = self._stream(iter((data,)), timeout=timeout, metadata=((MODEL_ID_HEADER, model_id),))
        return GrpcPodStream(call, self.pod_id)

    def stream_error(self, message: bytes) -> type[MeshError] | None:
        """The status a pod put in an error response of ModelStreamInfer (`mesh_status`)."""
        response = pb.ModelStreamInferResponse.FromString(message)
        if not response.error_message:
            return None
        status = response.infer_response.parameters.get("mesh_status")
        return error_class_named(status.string_param if status is not None else "UNKNOWN")

    async def metadata(self, data: bytes, timeout: float | None) -> bytes:
        response: bytes = await self._call(self._metadata, data, timeout)
        return response

    async def load(self, request: LoadRequest, timeout: float) -> Loaded:
        message = rpb.LoadModelRequest(
            model_id=request.model_id,
            format=request.format,
            storage=to_message(request.storage),
            options=dict(request.options),
        )
        try:
            response = await self._load(message, timeout=timeout)
        except aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                raise DeadlineExceeded(exc.details() or "") from None
            text = f"{exc.code().name}: {exc.details()}"
            if exc.code() is grpc.StatusCode.UNAVAILABLE and not answered(exc):
                raise PodUnreachable(text) from None  # gRPC's own: the pod said nothing
            raise error_from_status(exc.code(), text) from None
        except (asyncio.CancelledError, aio.UsageError):
            left = pod_left(self.pod_id)
            if left is None:
                raise
            raise PodUnreachable(f"UNAVAILABLE: {left}") from None
        return Loaded(int(response.size_bytes), int(response.artifact_bytes))

    async def unload(self, model_id: str, timeout: float) -> None:
        await self._call(self._unload, rpb.UnloadModelRequest(model_id=model_id), timeout)

    async def live(self, timeout: float) -> None:
        await self._call(self._live, pb.ServerLiveRequest(), timeout)

    async def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return await method(request, timeout=timeout)
        except aio.AioRpcError as exc:
            raise error_from_status(exc.code(), exc.details() or "") from None
        except (asyncio.CancelledError, aio.UsageError):
            left = pod_left(self.pod_id)
            if left is None:
                raise
            raise left from None

    async def aclose(self) -> None:
        await self.channel.close()


# After a pod's data port could not be reached, its inference goes over gRPC this long before
# the frames are tried again: a pod whose data port a network policy blocks (or a firewall
# drops) keeps serving over its gRPC port, one failed connect per period, instead of failing
# every request.
FRAMES_RETRY_AFTER = 30.0


class FramePodClient(PodClient):
    """A pod with a frame listener: unary inference over it (mesh.frames), the rest over gRPC.
    The frame client raises the same mesh errors as the gRPC call would: the pod's status with
    its message, Unavailable when the connection fails or closes under the call. When the
    listener cannot be reached at all, inference falls back to the pod's gRPC port for
    FRAMES_RETRY_AFTER seconds: at once when the connect was refused, from the next call when
    it timed out (that call is retried elsewhere, as a lost connection is: the pod may be
    partitioned or dead)."""

    def __init__(
        self,
        pod_id: str,
        address: str,
        max_message_bytes: int,
        data_address: str,
        *,
        tls: ClientCredentials | None = None,
    ) -> None:
        super().__init__(pod_id, address, max_message_bytes, data_address, tls=tls)
        self._frames = FrameClient(
            pod_id,
            data_address,
            max_message_bytes,
            ssl_context=tls.context if tls is not None else None,
            server_hostname=tls.server_name if tls is not None else None,
        )

    async def infer(self, data: bytes, model_id: str, timeout: float | None) -> bytes:
        loop = asyncio.get_running_loop()
        failed_at = self._frames.connect_failed_at
        if failed_at is not None and loop.time() - failed_at < FRAMES_RETRY_AFTER:
            return await super().infer(data, model_id, timeout)
        started = loop.time()
        try:
            return await self._frames.infer(data, model_id, timeout)
        except ConnectFailed as exc:
            log.warning(
                "%s; inference goes to pod %s over gRPC (%s) for %.0f s",
                exc, self.pod_id, self.address, FRAMES_RETRY_AFTER,
            )  # fmt: skip
            if exc.timed_out:
                # Nothing answered: a partition as likely as a firewall. This call is retried
                # on another copy (as before), the next ones try the gRPC port.
                raise
            if timeout:
                timeout -= loop.time() - started
                if timeout <= 0:
                    raise DeadlineExceeded("Deadline Exceeded") from None
            return await super().infer(data, model_id, timeout)

    async def aclose(self) -> None:
        await self._frames.aclose()
        await super().aclose()


class InProcessPodClient(PodClient):
    """A pod in this process (`mesh serve`): inference calls its data plane directly, with no
    loopback hop; the control calls (load, unload, metadata) still go over its gRPC port.

    Its errors are the data plane's own mesh errors, as a gRPC pod's answers become them, so the
    router's forward treats both pods alike; a passed deadline is DeadlineExceeded, anything
    unexpected a MeshError (INTERNAL) naming it. Its inference cannot fall silent (a slow model
    is slow, not gone), so no attempt timeout watches it: no timer per call, and no probe of a
    gRPC port that inference does not use.
    """

    can_fall_silent = False

    def __init__(
        self,
        pod_id: str,
        address: str,
        max_message_bytes: int,
        local: LocalInfer,
        data_address: str = "",
        *,
        tls: ClientCredentials | None = None,
    ) -> None:
        super().__init__(pod_id, address, max_message_bytes, data_address, tls=tls)
        self._local = local

    async def infer(self, data: bytes, model_id: str, timeout: float | None) -> bytes:
        # The deadline is a timer that cancels this task, as asyncio.timeout's is, without its
        # context manager; and armed only once the call waits: a predict on the pod's loop
        # answers in its first step, and a timer set and cancelled per call was a fifth of the
        # router's cost of a hit in process. The call's first step runs here, as an await
        # would run it; the timer, when it is armed, counts from the call's start.
        call = self._local(data, model_id)
        deadline = None
        try:
            started = asyncio.get_running_loop().time()
            try:
                waits_on = call.send(None)
            except StopIteration as done:
                response: bytes = done.value
                return response
            if timeout is not None:
                deadline = _Deadline(started + timeout)
            return await _resume(call, waits_on)
        except asyncio.CancelledError:
            if deadline is not None and deadline.passed():
                raise DeadlineExceeded("Deadline Exceeded") from None
            raise
        except TimeoutError:
            raise DeadlineExceeded("Deadline Exceeded") from None
        except MeshError:
            raise
        except Exception as exc:
            log.exception("in-process inference of %s failed", model_id)
            raise MeshError(f"{type(exc).__name__}: {exc}") from None
        finally:
            if deadline is not None:
                deadline.close()


@types.coroutine
def _resume(call: Coroutine[Any, Any, T], waits_on: Any) -> Generator[Any, Any, T]:
    """The rest of `call`, whose first step yielded `waits_on` (a future it waits on): that
    future goes to the task as the call's own await would give it, then the call goes on
    under this one's await (a cancel thrown at the first wait is thrown into the call)."""
    try:
        yield waits_on
    except GeneratorExit:
        call.close()
        raise
    except BaseException as exc:
        try:
            waits_on = call.throw(exc)
        except StopIteration as done:
            result: T = done.value
            return result
        return (yield from _resume(call, waits_on))
    return (yield from call.__await__())


class _Deadline:
    """Cancels the current task at `deadline` (the loop's clock); `passed()` in its handler of
    CancelledError tells that cancel (to answer DeadlineExceeded) from anyone else's."""

    __slots__ = ("_fired", "_task", "_timer")

    def __init__(self, deadline: float) -> None:
        task = asyncio.current_task()
        assert task is not None  # a coroutine of the router's handlers
        self._task = task
        self._fired = False
        self._timer = asyncio.get_running_loop().call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._fired = True
        self._task.cancel()

    def passed(self) -> bool:
        """Whether the cancel being handled is this deadline's alone (taken back if so)."""
        if not self._fired:
            return False
        self._fired = False
        return self._task.uncancel() == 0

    def close(self) -> None:
        self._timer.cancel()
        if self._fired:  # the call ended before the cancel reached it: take it back
            self._fired = False
            self._task.uncancel()


class _Unreachable:
    """UnreachablePod's stream: it fails at its first read, as a call to a pod gone does."""

    __slots__ = ("_error",)

    def __init__(self, error: Unavailable) -> None:
        self._error = error

    async def read(self) -> bytes | None:
        raise self._error

    def cancel(self) -> None:
        pass


class UnreachablePod:
    """A pod whose record's gRPC address cannot be used (`why`, mesh.addresses): every call
    fails Unavailable with a message naming the pod and the address, and nothing is dialled."""

    can_fall_silent = False  # it answers every call at once

    def __init__(self, pod_id: str, address: str, data_address: str, why: str) -> None:
        self.pod_id = pod_id
        self.address = address
        self.data_address = data_address
        self.outstanding = 0
        self._message = f"pod {pod_id} cannot be reached at the address in its record: {why}"

    def _error(self) -> Unavailable:
        return PodUnreachable(self._message)

    async def infer(self, data: bytes, model_id: str, timeout: float | None) -> bytes:
        raise self._error()

    def stream(self, data: bytes, model_id: str, timeout: float | None) -> _Unreachable:
        return _Unreachable(self._error())

    def stream_error(self, message: bytes) -> type[MeshError] | None:
        return None

    async def metadata(self, data: bytes, timeout: float | None) -> bytes:
        raise self._error()

    async def load(self, request: LoadRequest, timeout: float) -> Loaded:
        raise PodUnreachable(f"UNAVAILABLE: {self._message}")  # a load's message names its status

    async def unload(self, model_id: str, timeout: float) -> None:
        raise self._error()

    async def live(self, timeout: float) -> None:
        raise self._error()

    async def aclose(self) -> None:
        pass


class GrpcPods:
    """The pool's `connect` (mesh.router.transport.Connect): gRPC channels of at most
    `max_message_bytes` per message, with inference over the pod's frame listener where it
    advertises one (`frames=False`: gRPC alone), or the pod in this process. With `tls`, both
    of a pod's ports are dialled over TLS with those credentials (every pod: a router speaks
    TLS to all its pods or to none)."""

    def __init__(
        self, max_message_bytes: int, *, frames: bool = True, tls: ClientCredentials | None = None
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self.frames = frames
        self.tls = tls

    def __call__(
        self, pod_id: str, address: str, local: LocalInfer | None, data_address: str = ""
    ) -> PodTransport:
        try:
            parse_address(address)
        except BadAddress as exc:
            log.warning("pod %s cannot be reached: its calls fail UNAVAILABLE: %s", pod_id, exc)
            return UnreachablePod(pod_id, address, data_address, str(exc))
        if local is not None:
            return InProcessPodClient(
                pod_id, address, self.max_message_bytes, local, data_address, tls=self.tls
            )
        if data_address and self.frames:
            try:
                parse_address(data_address)
            except BadAddress as exc:
                log.warning(
                    "pod %s: its data address cannot be used, inference goes over gRPC (%s): %s",
                    pod_id, address, exc,
                )  # fmt: skip
            else:
                return FramePodClient(
                    pod_id, address, self.max_message_bytes, data_address, tls=self.tls
                )
        # Keeps the data address it was made for, so that the pool reuses it.
        return PodClient(pod_id, address, self.max_message_bytes, data_address, tls=self.tls)
