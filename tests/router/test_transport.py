"""The pod transport's contract (mesh.router.transport.PodTransport's inference), one suite for
each way the router reaches a pod: gRPC alone (PodClient) and frames (FramePodClient over
mesh.frames, with gRPC for the rest). Each runs against a real server on loopback whose
inference is the same test pod (`TestPod`): the pod's own gRPC error mapping
(mesh.grpcutil.ErrorInterceptor, mm-model-id) and the pod's frame listener
(mesh.frames.FrameServer).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from mesh import errors, frames
from mesh.cluster.codec import Keys, encode
from mesh.cluster.memory import MemoryStore
from mesh.cluster.mirror import Mirror
from mesh.cluster.records import InstanceRecord, ModelRecord, PlacementRecord, PlacementState
from mesh.frames import FrameClient, FrameServer
from mesh.grpcstatus import status_of
from mesh.grpcutil import ErrorInterceptor
from mesh.router.core import Router
from mesh.router.grpcpods import FramePodClient, GrpcPods, PodClient
from mesh.router.pods import PodPool
from mesh.router.policy import RouterPolicy
from mesh.router.transport import PodTransport
from mesh.storageref import StorageRef
from tests.certs import make_certs

LIMIT = 64 * 1024


@dataclass
class TestPod:
    """What the pod does with a request, by its model id: echo, fail, hang, answer big."""

    __test__ = False

    entered: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    running: int = 0

    async def infer(self, data: bytes, model_id: str) -> bytes:
        self.running += 1
        try:
            if model_id == "hang":
                self.entered.set()
                try:
                    await self.release.wait()
                except asyncio.CancelledError:
                    self.cancelled.set()
                    raise
                return b"released"
            if model_id == "big":
                return b"x" * (LIMIT + 1)
            if model_id == "broken":
                raise ValueError("the model's code broke")
            for cls in ERRORS:
                if model_id == cls.__name__:
                    raise cls(f"{cls.__name__} from the pod: {data.decode()}")
            return model_id.encode() + b":" + data
        finally:
            self.running -= 1


# Errors the pod answers, each passed on by the router as it came.
ERRORS = (
    errors.ModelNotFound,
    errors.InvalidRequest,
    errors.ModelNotReady,
    errors.CapacityExhausted,
    errors.ModelLoadFailed,
    errors.Unavailable,
)


class GrpcPod:
    """The pod's gRPC side: ModelInfer (model from mm-model-id) and ServerLive, errors mapped
    by the pod's interceptor."""

    def __init__(self, pod: TestPod) -> None:
        self.server = aio.server(
            interceptors=[ErrorInterceptor()],
            options=[
                ("grpc.max_receive_message_length", LIMIT),
                ("grpc.max_send_message_length", LIMIT),
            ],
        )

        async def infer(request: bytes, context: aio.ServicerContext[Any, Any]) -> bytes:
            model = dict(context.invocation_metadata() or ()).get("mm-model-id", "")
            return await pod.infer(request, str(model))

        async def live(request: bytes, context: aio.ServicerContext[Any, Any]) -> bytes:
            return b"\x08\x01"

        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {
                "ModelInfer": grpc.unary_unary_rpc_method_handler(infer),
                "ServerLive": grpc.unary_unary_rpc_method_handler(live),
            })]
        )  # fmt: skip
        self.port = self.server.add_insecure_port("127.0.0.1:0")


@dataclass
class Running:
    pod: TestPod
    client: PodTransport
    frames: FrameServer | None


@pytest.fixture(params=["grpc", "frames"])
async def running(request: pytest.FixtureRequest) -> AsyncIterator[Running]:
    pod = TestPod()
    grpc_pod = GrpcPod(pod)
    await grpc_pod.server.start()
    frames = None
    client: PodTransport
    if request.param == "frames":
        frames = FrameServer(pod.infer, LIMIT)
        port = await frames.start("127.0.0.1", 0)
        client = FramePodClient("p", f"127.0.0.1:{grpc_pod.port}", LIMIT, f"127.0.0.1:{port}")
    else:
        client = PodClient("p", f"127.0.0.1:{grpc_pod.port}", LIMIT)
    yield Running(pod, client, frames)
    pod.release.set()
    await client.aclose()
    if frames is not None:
        await frames.aclose()
    await grpc_pod.server.stop(None)


# -- the contract, for every transport -------------------------------------------------------


async def test_a_request_reaches_its_model_and_the_pods_bytes_come_back(running: Running) -> None:
    assert await running.client.infer(b"hello", "m", 10.0) == b"m:hello"


async def test_requests_in_flight_together_each_get_their_own_answer(running: Running) -> None:
    answers = await asyncio.gather(
        *(running.client.infer(str(i).encode(), f"m{i}", 10.0) for i in range(50))
    )
    assert answers == [f"m{i}:{i}".encode() for i in range(50)]


@pytest.mark.parametrize("cls", ERRORS)
async def test_a_pods_error_comes_back_as_its_class_with_its_message(
    running: Running, cls: type[errors.MeshError]
) -> None:
    with pytest.raises(errors.MeshError) as caught:
        await running.client.infer(b"req", cls.__name__, 10.0)
    assert status_of(caught.value) == status_of(cls("x"))
    assert str(caught.value) == f"{cls.__name__} from the pod: req"


async def test_an_unexpected_failure_on_the_pod_is_internal_and_named(running: Running) -> None:
    with pytest.raises(errors.MeshError) as caught:
        await running.client.infer(b"", "broken", 10.0)
    assert status_of(caught.value) is grpc.StatusCode.INTERNAL
    assert "ValueError: the model's code broke" in str(caught.value)


async def test_a_passed_deadline_is_deadline_exceeded_and_stops_the_pods_work(
    running: Running,
) -> None:
    with pytest.raises(errors.DeadlineExceeded):
        await running.client.infer(b"", "hang", 0.3)
    await asyncio.wait_for(running.pod.cancelled.wait(), 10)


async def test_a_caller_that_gives_up_stops_the_pods_work(running: Running) -> None:
    call = asyncio.create_task(running.client.infer(b"", "hang", 60.0))
    await asyncio.wait_for(running.pod.entered.wait(), 10)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await asyncio.wait_for(running.pod.cancelled.wait(), 10)


async def test_a_call_in_flight_when_its_pod_leaves_is_unavailable_at_once(
    running: Running,
) -> None:
    call = asyncio.create_task(running.client.infer(b"", "hang", 60.0))
    await asyncio.wait_for(running.pod.entered.wait(), 10)
    await running.client.aclose()  # the pod left the mirror: the pool closes its client
    with pytest.raises(errors.Unavailable):
        await asyncio.wait_for(call, 10)


async def test_a_request_beyond_the_limit_is_resource_exhausted(running: Running) -> None:
    with pytest.raises(errors.MeshError) as caught:
        await running.client.infer(b"x" * (LIMIT + 1), "m", 10.0)
    assert status_of(caught.value) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await running.client.infer(b"after", "m", 10.0) == b"m:after"


async def test_an_answer_beyond_the_limit_is_resource_exhausted(running: Running) -> None:
    with pytest.raises(errors.MeshError) as caught:
        await running.client.infer(b"", "big", 10.0)
    assert status_of(caught.value) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await running.client.infer(b"after", "m", 10.0) == b"m:after"


async def test_an_answer_beyond_the_routers_smaller_limit_is_skipped_not_held() -> None:
    pod = TestPod()
    server = FrameServer(pod.infer, 2 * LIMIT)  # the pod allows more than the router
    port = await server.start("127.0.0.1", 0)
    client = FrameClient("p", f"127.0.0.1:{port}", LIMIT)
    try:
        with pytest.raises(errors.MeshError) as caught:
            await client.infer(b"", "big", 10.0)
        assert status_of(caught.value) is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await client.infer(b"after", "m", 10.0) == b"m:after"  # the same connection
    finally:
        await client.aclose()
        await server.aclose()


@pytest.mark.parametrize("kind", ["grpc", "frames"])
async def test_a_pod_that_is_not_there_is_unavailable(kind: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    address = f"127.0.0.1:{port}"
    client: PodTransport = (
        FramePodClient("gone", address, LIMIT, address)
        if kind == "frames"
        else PodClient("gone", address, LIMIT)
    )
    try:
        with pytest.raises(errors.Unavailable):
            await client.infer(b"", "m", 5.0)
    finally:
        await client.aclose()


@pytest.mark.parametrize("kind", ["grpc", "frames"])
async def test_a_pod_that_takes_no_connection_is_deadline_exceeded_at_the_callers_deadline(
    kind: str,
) -> None:
    # A listener whose accept queue is full: the kernel drops further connects unanswered
    # (as a pod's host does when it is gone or a firewall drops the port).
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        address = f"127.0.0.1:{full.getsockname()[1]}"
        fillers = [socket.socket() for _ in range(3)]
        for filler in fillers:
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(full.getsockname())
        client: PodTransport = (
            FramePodClient("silent", address, LIMIT, address)
            if kind == "frames"
            else PodClient("silent", address, LIMIT)
        )
        try:
            # Not Unavailable once a connect timeout of its own has passed: the caller's
            # deadline bounds the connect as it bounds the call.
            with pytest.raises(errors.DeadlineExceeded):
                await client.infer(b"", "m", 0.5)
        finally:
            await client.aclose()
            for filler in fillers:
                filler.close()


# -- which transport the pool gives a pod ----------------------------------------------------


async def test_the_pool_uses_frames_where_a_pod_advertises_them_and_reuses_each_client() -> None:
    pool = PodPool(GrpcPods(LIMIT))
    framed = pool.client("a", "127.0.0.1:1", "127.0.0.1:2")
    plain = pool.client("b", "127.0.0.1:3")
    assert isinstance(framed, FramePodClient)
    assert type(plain) is PodClient
    assert pool.client("a", "127.0.0.1:1", "127.0.0.1:2") is framed
    assert pool.client("b", "127.0.0.1:3") is plain
    moved = pool.client("a", "127.0.0.1:1", "127.0.0.1:9")  # the pod restarted on a new port
    assert moved is not framed and moved.data_address == "127.0.0.1:9"
    await pool.aclose()


async def test_with_frames_off_the_pool_uses_grpc_and_still_reuses_each_client() -> None:
    pool = PodPool(GrpcPods(LIMIT, frames=False))
    client = pool.client("a", "127.0.0.1:1", "127.0.0.1:2")
    assert type(client) is PodClient
    # A client made per call would close the one before it under its calls in flight.
    assert pool.client("a", "127.0.0.1:1", "127.0.0.1:2") is client
    await pool.aclose()


async def test_a_pod_in_process_keeps_its_client_whatever_it_advertises() -> None:
    pool = PodPool(GrpcPods(LIMIT))

    async def local(data: bytes, model_id: str) -> bytes:
        return b"local"

    pool.serve_in_process("e", local)
    client = pool.client("e", "127.0.0.1:1", "127.0.0.1:2")
    assert await client.infer(b"", "m", 5.0) == b"local"
    assert pool.client("e", "127.0.0.1:1", "127.0.0.1:2") is client
    await pool.aclose()


async def test_a_slow_model_in_process_is_waited_on_past_the_attempt_timeout() -> None:
    # The pod's gRPC port (here nothing listens on it) answers no probe: a watch on the call
    # would find the pod silent and give the request up as UNAVAILABLE.
    store, keys = MemoryStore(), Keys("/t/")
    await store.put(keys.model("m"), encode(ModelRecord("m", "onnx", storage=StorageRef(path="m"))))
    await store.put(keys.instance("e"), encode(InstanceRecord("e", "127.0.0.1:1", 2**30)))
    placement = PlacementRecord("m", "e", PlacementState.LOADED, time.time(), 1000)
    await store.put(keys.placement("m", "e"), encode(placement))
    mirror = Mirror(store, keys)
    await mirror.start()
    pool = PodPool(GrpcPods(LIMIT))

    async def slow_model(data: bytes, model_id: str) -> bytes:
        await asyncio.sleep(0.5)  # ten attempt timeouts
        return b"answer"

    pool.serve_in_process("e", slow_model)
    policy = RouterPolicy(attempt_timeout=0.05, probe_timeout=0.05)
    router = Router(store, mirror, keys, pool, router_id="r", lease=None, policy=policy)
    try:
        assert await router.infer(b"", "m", 10.0) == b"answer"
    finally:
        await mirror.aclose()
        await pool.aclose()


# -- the frame listener against peers that break the rules -----------------------------------


@pytest.fixture
async def listener() -> AsyncIterator[tuple[TestPod, FrameServer, int]]:
    pod = TestPod()
    server = FrameServer(pod.infer, LIMIT, max_in_flight=2)
    port = await server.start("127.0.0.1", 0)
    yield pod, server, port
    pod.release.set()
    await server.aclose()


def _request(call_id: int, model_id: str, data: bytes, timeout: float = 0.0) -> bytes:
    model = model_id.encode()
    size = struct.calcsize(">IBIdH") - 4 + len(model) + len(data)
    head = struct.pack(">IBIdH", size, 1, call_id, timeout, len(model))
    return head + model + data


async def _answer(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    (length,) = struct.unpack(">I", await reader.readexactly(4))
    frame = await reader.readexactly(length)
    _, call_id, status = struct.unpack_from(">BIB", frame)
    return call_id, status, frame[6:]


async def test_a_frame_claiming_gigabytes_is_answered_without_being_held(
    listener: tuple[TestPod, FrameServer, int],
) -> None:
    _, _, port = listener
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(struct.pack(">IBI", 2**32 - 1, 1, 7) + b"\0" * 1000)
    call_id, status, message = await asyncio.wait_for(_answer(reader), 10)
    assert (call_id, status) == (7, grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
    assert b"exceeds the limit" in message
    writer.close()


async def test_a_peer_that_breaks_the_protocol_is_cut_off_and_others_are_served(
    listener: tuple[TestPod, FrameServer, int],
) -> None:
    _, _, port = listener
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(struct.pack(">IBI", 5, 9, 1))  # a frame of no known kind
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed
    writer.close()
    client = FrameClient("p", f"127.0.0.1:{port}", LIMIT)
    assert await client.infer(b"still", "m", 5.0) == b"m:still"
    await client.aclose()


async def test_a_connection_runs_at_most_its_share_of_calls_and_reads_on_as_they_end(
    listener: tuple[TestPod, FrameServer, int],
) -> None:
    pod, _, port = listener
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for call_id in (1, 2, 3):
        writer.write(_request(call_id, "hang", b""))
    writer.write(_request(4, "m", b"last"))
    await asyncio.wait_for(pod.entered.wait(), 10)
    await asyncio.sleep(0.2)  # time for the listener to read on, were it not held back
    assert pod.running == 2  # max_in_flight: the third waits in the socket, unread
    pod.release.set()
    answers = {}
    for _ in range(4):
        call_id, status, body = await asyncio.wait_for(_answer(reader), 10)
        answers[call_id] = (status, body)
    assert answers[4] == (0, b"m:last")
    assert {answers[i] for i in (1, 2, 3)} == {(0, b"released")}
    writer.close()


async def test_a_connection_that_closes_cancels_the_calls_it_started(
    listener: tuple[TestPod, FrameServer, int],
) -> None:
    pod, _, port = listener
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_request(1, "hang", b""))
    await asyncio.wait_for(pod.entered.wait(), 10)
    writer.close()
    await asyncio.wait_for(pod.cancelled.wait(), 10)


class _ResumedLate(FrameClient):
    """A router whose loop is busy between a connect's end and its caller's turn: whatever the
    pod did meanwhile (here: dropped the connection) has been seen first."""

    async def _open(self) -> Any:
        connection = await super()._open()
        async with asyncio.timeout(10):
            while not connection.lost:
                await asyncio.sleep(0.01)
        return connection


async def test_a_connection_the_pod_drops_right_after_its_connect_is_unavailable() -> None:
    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    pod = await asyncio.start_server(drop, "127.0.0.1", 0)
    client = _ResumedLate("p", f"127.0.0.1:{pod.sockets[0].getsockname()[1]}", LIMIT)
    try:
        # Not a request written into a closed connection, waiting for an answer until its
        # deadline (DEADLINE_EXCEEDED, not retried) or for ever (no deadline).
        for timeout in (5.0, None):
            with pytest.raises(errors.Unavailable):
                await asyncio.wait_for(client.infer(b"", "m", timeout), 10)
    finally:
        await client.aclose()
        pod.close()


async def test_a_stopping_listener_lets_calls_in_flight_finish(
    listener: tuple[TestPod, FrameServer, int],
) -> None:
    pod, server, port = listener
    client = FrameClient("p", f"127.0.0.1:{port}", LIMIT)
    call = asyncio.create_task(client.infer(b"", "hang", 30.0))
    await asyncio.wait_for(pod.entered.wait(), 10)
    stopping = asyncio.create_task(server.aclose(grace=30.0))
    await asyncio.sleep(0.1)
    assert not stopping.done()  # waits for the call in flight
    with pytest.raises(errors.Unavailable):  # a new request is refused at once, not held
        await client.infer(b"", "m", 5.0)
    pod.release.set()
    assert await asyncio.wait_for(call, 10) == b"released"
    await asyncio.wait_for(stopping, 10)
    with pytest.raises(errors.Unavailable):  # nothing listens now: retried elsewhere
        await client.infer(b"", "m", 5.0)
    await client.aclose()


async def test_a_peer_that_reads_no_answers_does_not_keep_a_stopped_listeners_calls_running() -> (
    None
):
    pod = TestPod()
    huge = 32 * 2**20  # more than the kernel's buffers take for a peer that reads nothing

    async def infer(data: bytes, model_id: str) -> bytes:
        return b"x" * huge if model_id == "huge" else await pod.infer(data, model_id)

    server = FrameServer(infer, 2 * huge)
    port = await server.start("127.0.0.1", 0)
    with socket.socket() as peer:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        peer.connect(("127.0.0.1", port))
        peer.sendall(_request(1, "huge", b"") + _request(2, "hang", b""))
        await asyncio.wait_for(pod.entered.wait(), 10)
        await server.aclose(grace=0.2)
        # Past the grace the stuck connection is dropped and its call stopped, as a gRPC
        # server's stop cancels what is left; not left running on a stopped pod.
        await asyncio.wait_for(pod.cancelled.wait(), 10)


# -- TLS ---------------------------------------------------------------------------------------


def _contexts(d: Path) -> tuple[ssl.SSLContext, ssl.SSLContext, ssl.SSLContext]:
    """(server requiring client certificates, client with one, client without)."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(d / "server.crt", d / "server.key")
    server.load_verify_locations(d / "ca.crt")
    server.verify_mode = ssl.CERT_REQUIRED
    with_cert = ssl.create_default_context(cafile=str(d / "ca.crt"))
    with_cert.load_cert_chain(d / "client.crt", d / "client.key")
    without = ssl.create_default_context(cafile=str(d / "ca.crt"))
    return server, with_cert, without


async def test_frames_over_mutual_tls_serve_a_client_with_a_certificate_only(
    tmp_path: Path,
) -> None:
    server_ctx, with_cert, without = _contexts(make_certs(tmp_path))
    pod = TestPod()
    server = FrameServer(pod.infer, LIMIT, ssl_context=server_ctx)
    port = await server.start("127.0.0.1", 0)
    good = FrameClient("p", f"127.0.0.1:{port}", LIMIT, ssl_context=with_cert)
    bad = FrameClient("p", f"127.0.0.1:{port}", LIMIT, ssl_context=without)
    plain = FrameClient("p", f"127.0.0.1:{port}", LIMIT)
    try:
        assert await good.infer(b"secret", "m", 10.0) == b"m:secret"
        for refused in (bad, plain):
            with pytest.raises(errors.Unavailable):
                await refused.infer(b"", "m", 5.0)
    finally:
        for client in (good, bad, plain):
            with contextlib.suppress(errors.MeshError):
                await client.aclose()
        await server.aclose()


async def test_a_tls_peer_that_never_handshakes_is_closed_by_the_pod(tmp_path: Path) -> None:
    # A connection to the TLS data port that sends nothing holds a socket of the pod's until
    # the handshake's timeout (asyncio's default: 60 s); the pod's is its own, and short here.
    server_ctx, _, _ = _contexts(make_certs(tmp_path))
    server = FrameServer(TestPod().infer, LIMIT, ssl_context=server_ctx, handshake_timeout=0.5)
    port = await server.start("127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        assert await asyncio.wait_for(reader.read(), timeout=30) == b""  # closed by the pod
    finally:
        writer.close()
        await server.aclose()


def _request_frame(call_id: int, model_id: str, data: bytes) -> bytes:
    model = model_id.encode()
    head = frames._REQUEST.pack(
        len(data) + len(model) + frames._REQUEST.size - 4, frames.REQUEST, call_id, 10.0, len(model)
    )
    return head + model + data


async def test_calls_cancelled_in_the_frames_that_asked_for_them_free_their_places() -> None:
    # A CANCEL read in the same batch as its REQUEST cancels the call's task before its first
    # step: its code never runs, and the call kept its place among max_in_flight for ever, so
    # the connection ran fewer calls at once, down to one.
    pod = TestPod()
    server = FrameServer(pod.infer, LIMIT, max_in_flight=3)
    port = await server.start("127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        cancel = frames._CANCEL
        writer.write(
            b"".join(
                _request_frame(i, "m", b"x") + cancel.pack(cancel.size - 4, frames.CANCEL, i)
                for i in (1, 2)
            )
        )
        writer.write(_request_frame(20, "hang", b"") + _request_frame(21, "hang", b""))
        async with asyncio.timeout(10):  # both run at once: the two cancelled keep no place
            while pod.running < 2:
                await asyncio.sleep(0.01)
        pod.release.set()
        answered = set()
        async with asyncio.timeout(10):
            while answered != {20, 21}:
                head = await reader.readexactly(frames._RESPONSE.size)
                length, _, call_id, status = frames._RESPONSE.unpack(head)
                await reader.readexactly(length + 4 - frames._RESPONSE.size)
                if call_id in (20, 21):
                    assert status == 0
                    answered.add(call_id)
    finally:
        writer.close()
        await server.aclose()
