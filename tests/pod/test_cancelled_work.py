"""A pod whose work in flight is cancelled under a call (the pod stopping past its grace, the
call's task cancelled) answers it UNAVAILABLE, which a router retries on another copy: never
UNKNOWN, INTERNAL, or a connection dropped without a status."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc import aio

from mesh.errors import MeshError
from mesh.frames import FrameClient, FrameServer
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.grpcstatus import status_of
from mesh.grpcutil import ErrorInterceptor, service_handler
from mesh.pod.service import InferenceService
from mesh.runtimes.registry import RuntimeRegistry
from tests.fakes import FakeRuntime
from tests.helpers import RunningPod, infer_request, running_pod


@pytest.fixture
def stuck(tmp_path: Path) -> Iterator[tuple[RunningPod, FakeRuntime]]:
    """A pod serving "held", whose predicts wait until the test lets them go."""
    (tmp_path / "held").mkdir()
    (tmp_path / "held" / "model.fake").write_bytes(b"\0" * 100)
    runtime = FakeRuntime()
    with running_pod(
        runtimes=RuntimeRegistry([runtime]), models=str(tmp_path), data_port=0, drain_timeout=0.2
    ) as pod:
        pod.v2.ModelInfer(infer_request("held", x=np.ones(1, np.float32)), timeout=30)
        runtime.predicting.clear()
        runtime.predict_gate = threading.Event()
        try:
            yield pod, runtime
        finally:
            runtime.predict_gate.set()


REQUEST = infer_request("held", x=np.ones(1, np.float32))


def test_a_pod_stopping_past_its_grace_answers_its_grpc_calls_unavailable(
    stuck: tuple[RunningPod, FakeRuntime],
) -> None:
    pod, runtime = stuck
    call = pod.v2.ModelInfer.future(REQUEST, timeout=30)
    assert runtime.predicting.wait(30)
    stopping = asyncio.run_coroutine_threadsafe(pod.server.aclose(), pod.loop)
    with pytest.raises(grpc.RpcError) as err:
        call.result(30)
    runtime.predict_gate.set()  # type: ignore[union-attr]
    stopping.result(30)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_pod_stopping_past_its_grace_answers_its_frame_calls_unavailable(
    stuck: tuple[RunningPod, FakeRuntime],
) -> None:
    pod, runtime = stuck

    async def scenario() -> tuple[grpc.StatusCode, str]:
        client = FrameClient("pod", f"127.0.0.1:{pod.server.data_port}", 2**20)
        call = asyncio.create_task(client.infer(REQUEST.SerializeToString(), "held", 30))
        await asyncio.to_thread(runtime.predicting.wait, 30)
        stopping = asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(pod.server.aclose(), pod.loop)
        )
        try:
            await call
        except MeshError as exc:
            return status_of(exc), str(exc)
        finally:
            runtime.predict_gate.set()  # type: ignore[union-attr]
            await stopping
            await client.aclose()
        return grpc.StatusCode.OK, ""

    code, message = asyncio.run(scenario())
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "connection closed" in message


async def _cancelled_work(*_: object) -> bytes:
    """Work that is cancelled under its call: a future it awaits is cancelled (by whatever
    owns it), not the call's task."""
    work = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(work.cancel)
    await work
    raise AssertionError("the work was not cancelled")


def test_work_cancelled_under_a_frame_call_is_answered_unavailable() -> None:
    async def scenario() -> tuple[grpc.StatusCode, str]:
        server = FrameServer(_cancelled_work, 2**20)
        client = FrameClient("pod", f"127.0.0.1:{await server.start('127.0.0.1', 0)}", 2**20)
        try:
            await client.infer(b"", "m", 30)
        except MeshError as exc:
            return status_of(exc), str(exc)
        finally:
            await client.aclose()
            await server.aclose()
        return grpc.StatusCode.OK, ""

    # Unanswered, the call waited out its 30 s deadline.
    assert asyncio.run(scenario()) == (
        grpc.StatusCode.UNAVAILABLE, "the pod's work for the call was cancelled"
    )  # fmt: skip


def test_work_cancelled_under_a_grpc_call_is_answered_unavailable() -> None:
    async def live(request: pb.ServerLiveRequest, context: object) -> pb.ServerLiveResponse:
        await _cancelled_work()
        return pb.ServerLiveResponse(live=True)

    async def scenario() -> tuple[grpc.StatusCode, str]:
        server = aio.server(interceptors=[ErrorInterceptor()])
        server.add_generic_rpc_handlers([service_handler(
            "inference.GRPCInferenceService",
            {"ServerLive": (live, pb.ServerLiveRequest, pb.ServerLiveResponse)},
        )])  # fmt: skip
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.unary_unary(
                    "/inference.GRPCInferenceService/ServerLive",
                    request_serializer=pb.ServerLiveRequest.SerializeToString,
                    response_deserializer=pb.ServerLiveResponse.FromString,
                )
                try:
                    await call(pb.ServerLiveRequest(), timeout=30)
                except aio.AioRpcError as exc:
                    return exc.code(), exc.details() or ""
        finally:
            await server.stop(0)
        return grpc.StatusCode.OK, ""

    # Unanswered (grpc sends no status for a handler's CancelledError), the call waited out
    # its 30 s deadline.
    assert asyncio.run(scenario()) == (
        grpc.StatusCode.UNAVAILABLE,
        "/inference.GRPCInferenceService/ServerLive: its work was cancelled",
    )


class _CancelledStreams:
    """The part of a DataPlane ModelStreamInfer calls, whose every request's work is cancelled."""

    async def stream_infer(self, request: object, name: str | None = None) -> AsyncIterator[bytes]:
        await _cancelled_work()
        yield b""


def test_work_cancelled_under_a_streamed_request_is_answered_unavailable() -> None:
    async def scenario() -> list[pb.ModelStreamInferResponse]:
        server = aio.server()
        server.add_generic_rpc_handlers([InferenceService(_CancelledStreams()).handler()])  # type: ignore[arg-type]
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.stream_stream(
                    "/inference.GRPCInferenceService/ModelStreamInfer",
                    request_serializer=pb.ModelInferRequest.SerializeToString,
                    response_deserializer=pb.ModelStreamInferResponse.FromString,
                )
                request = pb.ModelInferRequest(model_name="m", id="r1")
                return [r async for r in call(iter([request]), timeout=30)]
        finally:
            await server.stop(0)

    # Unanswered, the request had no response at all, and the stream ended as if served.
    (response,) = asyncio.run(scenario())
    assert response.error_message == "the pod's work for the request was cancelled"
    assert response.infer_response.id == "r1"
    assert response.infer_response.parameters["mesh_status"].string_param == "UNAVAILABLE"
