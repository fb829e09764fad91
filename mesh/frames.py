"""The data transport for unary inference between router and pod: length-prefixed frames over
one TCP connection (TLS when given a context), many requests in flight on it at once.

gRPC stays for everything else (streams, metadata, loads, probes, management); this transport
carries only `ModelInfer`'s bytes, which the router forwards untouched. It exists because a
grpc.aio client call costs the router about as much CPU as the rest of its hop together
(docs/benchmarks.md, "The router's hop"); a frame costs one write and one parse.

Every frame is a 4-byte big-endian length, then what it says:

    request   kind 1 (u8), id (u32), timeout in seconds (f64, 0: none),
              model id length (u16), model id (UTF-8), the serialized ModelInferRequest
    cancel    kind 2 (u8), id (u32)                the client gave up: stop the call
    response  kind 3 (u8), id (u32), status (u8),  the gRPC code's number, 0 for OK;
              then the serialized ModelInferResponse, or the error's UTF-8 message

How it fails, and what each side keeps of gRPC's behaviour:
- Errors: the pod's mesh error is sent as its status (mesh.grpcstatus's table) with its
  message, and the client raises the class of that status with the message unchanged, as the
  gRPC transport does; anything unexpected on the pod is INTERNAL naming it.
- Deadlines: the pod runs the call under the request's timeout (DEADLINE_EXCEEDED past it) and
  the client stops waiting at the same deadline, connect included, telling the pod to stop (a
  cancel frame).
- Cancellation: a caller cancelled while waiting sends a cancel frame; a connection that closes
  cancels every call the pod is running for it. Work cancelled under a call that is not
  (a future it awaited cancelled) is answered UNAVAILABLE.
- A pod that goes away: every call waiting on its connection fails `Unavailable` (which the
  router retries on another copy), and so does a connect that fails; the next call reconnects.
- Memory: a frame longer than `max_message_bytes` (plus its header) is never held: its call
  fails RESOURCE_EXHAUSTED, as gRPC's limits answer, and its bytes are skipped as they come;
  each side also refuses to send a message beyond it. A peer that breaks the protocol (an
  unknown kind, a frame shorter than its header) has its connection closed. The pod
  runs at most `max_in_flight` calls per connection and stops reading the connection, so the
  kernel's flow control holds the client back, until one ends; it also stops reading while
  the client does not read its answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable

import grpc

from mesh.addresses import parse_address
from mesh.errors import ConnectFailed, DeadlineExceeded, MeshError, Unavailable
from mesh.grpcstatus import error_from_status, status_of

log = logging.getLogger(__name__)

# (serialized ModelInferRequest, model id) -> serialized ModelInferResponse, raising MeshError.
Infer = Callable[[bytes, str], Awaitable[bytes]]

REQUEST, CANCEL, RESPONSE = 1, 2, 3
_LENGTH = struct.Struct(">I")
_REQUEST = struct.Struct(">IBIdH")  # length, kind, id, timeout, model id length
_CANCEL = struct.Struct(">IBI")
_RESPONSE = struct.Struct(">IBIB")  # length, kind, id, status
# The most a frame adds to its message, after the length: a request's header and a model id
# of up to 64 KiB; a response's header.
_REQUEST_OVERHEAD = _REQUEST.size - 4 + 0xFFFF
_RESPONSE_OVERHEAD = _RESPONSE.size - 4
MAX_IN_FLIGHT = 256
# A TLS connection that has not finished its handshake by then is closed (asyncio's default is
# 60 s: a peer that connects and says nothing would hold a socket that long). The router's
# handshake on loopback or in a cluster network takes milliseconds.
HANDSHAKE_TIMEOUT = 10.0
# Answers beyond this many bytes waiting in the socket's buffer pause the pod's reading.
_WRITE_HIGH = 4 * 2**20

_CODES = {code.value[0]: code for code in grpc.StatusCode}
_OK = grpc.StatusCode.OK.value[0]
_INTERNAL = grpc.StatusCode.INTERNAL.value[0]
_DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
_INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]


def _keepalive(transport: asyncio.BaseTransport) -> None:
    """Probe an idle connection (20 s, then every 5 s, 3 misses), as the gRPC channel does:
    a peer whose host vanished is found without a request having to time out."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 20)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


class _Frames(asyncio.Protocol):
    """Cuts the bytes received into frames, each handed to `frame`; a frame longer than the
    limit is handed to `oversized` by its head (kind and id) and its bytes are skipped as they
    come, never held."""

    def __init__(self, limit: int) -> None:
        self._limit = limit  # the longest frame taken, after its length
        self._buffer = bytearray()
        self._skip = 0  # bytes of an oversized frame still to come
        # True: frames wait in the buffer (and the transport reads no more) until `process`.
        self.hold = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        _keepalive(transport)

    def data_received(self, data: bytes) -> None:
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                return
            data, self._skip = data[self._skip :], 0
        buffer = self._buffer
        if not buffer and len(data) >= 4 and not self.hold:
            # The usual case: the data is one whole frame, with nothing left from before.
            (length,) = _LENGTH.unpack_from(data)
            if length + 4 == len(data) and 5 <= length <= self._limit:
                self.frame(data)
                return
        buffer += data
        self.process()

    def process(self) -> None:
        """Hand on the whole frames in the buffer, until there are none or `hold` is set."""
        buffer = self._buffer
        while len(buffer) >= 4 and not self.hold:
            (length,) = _LENGTH.unpack_from(buffer)
            if length < 5:
                self.refuse(f"a frame of {length} bytes, shorter than any")
                return
            end = length + 4
            if length > self._limit:
                if len(buffer) < 9:
                    return  # its kind and id first
                head = bytes(buffer[:9])
                dropped = min(len(buffer), end)
                del buffer[:dropped]
                self._skip = end - dropped
                self.oversized(head, length)
                continue
            if len(buffer) < end:
                return
            frame = bytes(buffer[:end])
            del buffer[:end]
            self.frame(frame)

    def frame(self, frame: bytes) -> None:
        """One whole frame, its length prefix included."""
        raise NotImplementedError

    def oversized(self, head: bytes, length: int) -> None:
        """A frame of `length` bytes, beyond the limit: its first 9 bytes (length, kind, id)."""
        raise NotImplementedError

    def too_long(self, length: int) -> bytes:
        return f"a frame of {length} bytes exceeds the limit of {self._limit}".encode()

    def refuse(self, why: str) -> None:
        """The peer broke the protocol: close the connection."""
        log.warning("closing a frame connection from %s: %s", self._peer(), why)
        self._buffer.clear()
        if self.transport is not None:
            self.transport.abort()

    def _peer(self) -> str:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)


# -- the pod's side --------------------------------------------------------------------------


class FrameServer:
    """The pod's frame listener: each request is `infer(data, model_id)`, its answer or its
    mesh error sent back.

        server = FrameServer(wire_infer(plane), max_message_bytes=64 * 2**20)
        port = await server.start("0.0.0.0", 0)
        ...
        await server.aclose(grace=30.0)
    """

    def __init__(
        self,
        infer: Infer,
        max_message_bytes: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_in_flight: int = MAX_IN_FLIGHT,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self._infer = infer
        self._max_message_bytes = max_message_bytes
        self._ssl = ssl_context
        self._handshake_timeout = handshake_timeout
        self._max_in_flight = max_in_flight
        self._server: asyncio.Server | None = None
        self._connections: set[_ServerConnection] = set()

    async def start(self, host: str, port: int) -> int:
        """Listen; the bound port."""
        loop = asyncio.get_running_loop()
        if self._ssl is None:
            self._server = await loop.create_server(self._connection, host, port)
        else:
            self._server = await loop.create_server(
                self._connection, host, port, ssl=self._ssl,
                ssl_handshake_timeout=self._handshake_timeout,
            )  # fmt: skip
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    def _connection(self) -> _ServerConnection:
        return _ServerConnection(self, self._max_message_bytes, self._max_in_flight)

    async def aclose(self, grace: float = 0.0) -> None:
        """Take no new connection, answer new requests UNAVAILABLE (the router retries them on
        another copy), let the calls in flight end (up to `grace` seconds), then close every
        connection (calls still running are cancelled; one whose answers are not read by the
        end of the grace is cut)."""
        if self._server is None:
            return
        server, self._server = self._server, None
        loop = asyncio.get_running_loop()
        end = loop.time() + grace
        server.close()
        for connection in self._connections:
            connection.stop_reading()
        running = [t for c in self._connections for t in c.calls.values()]
        if running and grace > 0:
            await asyncio.wait(running, timeout=grace)
        for connection in list(self._connections):
            if connection.transport is not None:
                connection.transport.close()
        # close() waits for the answers written to go out; a peer that reads none would keep
        # its connection, and the calls it still runs, for ever: past the grace it is cut.
        closing = [c.closed for c in self._connections]
        if closing:
            await asyncio.wait(closing, timeout=max(0.0, end - loop.time()))
        for connection in list(self._connections):
            if connection.transport is not None:
                connection.transport.abort()
        await server.wait_closed()


class _ServerConnection(_Frames):
    def __init__(self, server: FrameServer, max_message_bytes: int, max_in_flight: int) -> None:
        super().__init__(max_message_bytes + _REQUEST_OVERHEAD)
        self._server = server
        self._max_message_bytes = max_message_bytes
        self._max_in_flight = max_in_flight
        self.calls: dict[int, asyncio.Task[None]] = {}
        self._paused_writing = False
        self._stopped = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.set_write_buffer_limits(high=_WRITE_HIGH)
        self._server._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._connections.discard(self)
        if not self.closed.done():
            self.closed.set_result(None)
        for call in self.calls.values():
            call.cancel()  # nobody is left to answer: the client went away

    def frame(self, frame: bytes) -> None:
        kind = frame[4]
        if kind == REQUEST:
            if len(frame) < _REQUEST.size:
                self.refuse("a short request frame")
                return
            _, _, call_id, timeout, id_length = _REQUEST.unpack_from(frame)
            start = _REQUEST.size + id_length
            if len(frame) < start or call_id in self.calls:
                self.refuse("a malformed request frame (its model id cut, or its id in use)")
                return
            if self._stopped:
                self._answer(call_id, _UNAVAILABLE, b"the pod is stopping")
                return
            if len(frame) - start > self._max_message_bytes:
                message = f"the request of {len(frame) - start} bytes exceeds the limit of "
                self._answer(call_id, _EXHAUSTED, f"{message}{self._max_message_bytes}".encode())
                return
            try:
                model_id = frame[_REQUEST.size : start].decode()
            except UnicodeDecodeError:
                self._answer(call_id, _INVALID, b"the model id is not UTF-8")
                return
            task = asyncio.get_running_loop().create_task(
                self._call(call_id, frame[start:], model_id, timeout)
            )
            self.calls[call_id] = task
            # A CANCEL read in the same batch cancels the task before its first step, and then
            # none of `_call` runs, its `finally` neither: the place is given back here too.
            task.add_done_callback(functools.partial(self._ended, call_id))
            self._flow()
        elif kind == CANCEL and len(frame) == _CANCEL.size:
            _, _, call_id = _CANCEL.unpack(frame)
            call = self.calls.get(call_id)
            if call is not None:
                call.cancel()
        else:
            self.refuse(f"a frame of unknown kind {kind}")

    def oversized(self, head: bytes, length: int) -> None:
        # As a gRPC server answers a message beyond its limit: RESOURCE_EXHAUSTED, and the
        # connection goes on (the frame's bytes are skipped as they come).
        _, kind, call_id = _CANCEL.unpack(head)
        if kind != REQUEST:
            self.refuse(f"a frame of kind {kind} and {length} bytes")
            return
        self._answer(call_id, _EXHAUSTED, b"request: " + self.too_long(length))

    async def _call(self, call_id: int, data: bytes, model_id: str, timeout: float) -> None:
        try:
            if timeout > 0:
                async with asyncio.timeout(timeout):
                    response = await self._server._infer(data, model_id)
            else:
                response = await self._server._infer(data, model_id)
            if len(response) > self._max_message_bytes:
                status = _EXHAUSTED
                response = (
                    f"the response of {len(response)} bytes exceeds the limit of "
                    f"{self._max_message_bytes}"
                ).encode()
            else:
                status = _OK
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                return  # the client cancelled the call or went away: nobody waits for an answer
            # The work under the call was cancelled, not the call: unanswered, the client
            # would wait out its deadline.
            status, response = _UNAVAILABLE, b"the pod's work for the call was cancelled"
        except TimeoutError:
            status, response = _DEADLINE, b"Deadline Exceeded"
        except MeshError as exc:
            status, response = status_of(exc).value[0], str(exc).encode()
        except Exception as exc:
            log.exception("inference of %s failed", model_id)
            status, response = _INTERNAL, f"{type(exc).__name__}: {exc}".encode()
        finally:
            del self.calls[call_id]
            self._flow()
        self._answer(call_id, status, response)

    def _ended(self, call_id: int, task: asyncio.Task[None]) -> None:
        if self.calls.get(call_id) is task:
            del self.calls[call_id]
            self._flow()

    def _answer(self, call_id: int, status: int, body: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(_RESPONSE.pack(len(body) + 6, RESPONSE, call_id, status) + body)

    # Flow control: read while fewer than max_in_flight calls run and the client reads; once
    # stopped, read on, answering each new request UNAVAILABLE at once.
    def pause_writing(self) -> None:
        self._paused_writing = True
        self._flow()

    def resume_writing(self) -> None:
        self._paused_writing = False
        self._flow()

    def stop_reading(self) -> None:
        self._stopped = True
        self._flow()

    def _flow(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        full = not self._stopped and len(self.calls) >= self._max_in_flight
        pause = self._paused_writing or full
        if pause and not self.hold:
            self.hold = True
            self.transport.pause_reading()
        elif not pause and self.hold:
            self.hold = False
            self.transport.resume_reading()
            self.process()  # the frames that came before the pause


# -- the router's side -----------------------------------------------------------------------


class FrameClient:
    """One pod's frame listener, as the router calls it: `await client.infer(data, model_id,
    timeout)` answers the pod's response bytes or raises its mesh error. One connection, opened
    on first use and again after it closes. An `address` that is not host:port raises
    mesh.addresses.BadAddress here, before any call.

        client = FrameClient("pod-0", "10.0.0.5:8086", max_message_bytes=64 * 2**20)
        response = await client.infer(request_bytes, "my-model", timeout=10.0)
        await client.aclose()
    """

    def __init__(
        self,
        pod_id: str,
        address: str,
        max_message_bytes: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        self.pod_id = pod_id
        self.address = address
        self._where = parse_address(address)  # BadAddress for one that cannot be dialled
        self._max_message_bytes = max_message_bytes
        self._ssl = ssl_context
        self._server_hostname = server_hostname
        self._connect_timeout = connect_timeout
        self._connection: _ClientConnection | None = None
        self._connecting: asyncio.Future[_ClientConnection] | None = None
        self._ids = itertools.count(1)
        self._closed = False
        # The loop's time of the last connect that failed (ConnectFailed), None since one
        # succeeded.
        self.connect_failed_at: float | None = None

    async def infer(self, data: bytes, model_id: str, timeout: float | None) -> bytes:
        if len(data) > self._max_message_bytes:
            raise error_from_status(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the request of {len(data)} bytes exceeds the limit of {self._max_message_bytes}",
            )
        loop = asyncio.get_running_loop()
        connection = self._connection
        if connection is None or connection.lost:
            # The caller's deadline bounds the connect too (as a gRPC call's does): what is
            # left of it goes to the pod.
            started = loop.time()
            connection = await self._connect(timeout)
            if connection.lost:  # it closed before this caller's turn came: written, it is lost
                raise Unavailable(f"pod {self.pod_id}: its connection closed as it opened")
            if timeout:
                timeout -= loop.time() - started
                if timeout <= 0:
                    raise DeadlineExceeded("Deadline Exceeded")
        call_id = next(self._ids) & 0xFFFFFFFF
        answer: asyncio.Future[bytes] = loop.create_future()
        connection.waiting[call_id] = answer
        model = model_id.encode()
        assert connection.transport is not None
        connection.transport.write(
            _REQUEST.pack(
                len(data) + len(model) + _REQUEST.size - 4,
                REQUEST,
                call_id,
                timeout or 0.0,
                len(model),
            )
            + model
            + data
        )
        timer = loop.call_later(timeout, _expire, answer) if timeout else None
        try:
            return await answer
        except (asyncio.CancelledError, DeadlineExceeded):
            connection.cancel(call_id)  # stop the pod's work: nobody waits for it
            raise
        finally:
            connection.waiting.pop(call_id, None)
            if timer is not None:
                timer.cancel()

    async def _connect(self, timeout: float | None) -> _ClientConnection:
        if self._closed:
            raise Unavailable(f"pod {self.pod_id} left the mesh (its connection is closed)")
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
            self._connecting.add_done_callback(self._opened)
        # A caller that gives up (or whose deadline passes) does not cancel the connect the
        # others share.
        try:
            async with asyncio.timeout(timeout or None):
                return await asyncio.shield(self._connecting)
        except TimeoutError:  # _open's own failures are Unavailable
            raise DeadlineExceeded("Deadline Exceeded") from None

    def _opened(self, connecting: asyncio.Future[_ClientConnection]) -> None:
        self._connecting = None
        if connecting.cancelled():
            return
        if connecting.exception() is None:
            self._connection = connecting.result()
            self.connect_failed_at = None
        elif isinstance(connecting.exception(), ConnectFailed):
            # Seen even when every caller gave up first (their deadlines shorter than the
            # connect's): the transport's user may then go another way for a while.
            self.connect_failed_at = asyncio.get_running_loop().time()

    async def _open(self) -> _ClientConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: _ClientConnection(self.pod_id, self._max_message_bytes),
                    self._where.host,
                    self._where.port,
                    ssl=self._ssl,
                    server_hostname=self._server_hostname if self._ssl else None,
                )
        except (OSError, TimeoutError) as exc:
            failed = ConnectFailed(
                f"pod {self.pod_id}: cannot connect to {self.address}: {str(exc) or 'timed out'}"
            )
            failed.timed_out = isinstance(exc, TimeoutError)
            raise failed from None
        if self._closed:
            connection.close()
            raise Unavailable(f"pod {self.pod_id} left the mesh (its connection is closed)")
        return connection

    async def aclose(self) -> None:
        """Close the connection: the calls waiting on it fail Unavailable (to retry elsewhere)."""
        self._closed = True
        if self._connection is not None:
            self._connection.close()


def _expire(answer: asyncio.Future[bytes]) -> None:
    if not answer.done():
        answer.set_exception(DeadlineExceeded("Deadline Exceeded"))


class _ClientConnection(_Frames):
    def __init__(self, pod_id: str, max_message_bytes: int) -> None:
        super().__init__(max_message_bytes + _RESPONSE_OVERHEAD)
        self._pod_id = pod_id
        self.waiting: dict[int, asyncio.Future[bytes]] = {}
        self.lost = False

    def frame(self, frame: bytes) -> None:
        if frame[4] != RESPONSE or len(frame) < _RESPONSE.size:
            self.refuse(f"a frame of kind {frame[4]} where a response was due")
            return
        _, _, call_id, status = _RESPONSE.unpack_from(frame)
        answer = self.waiting.pop(call_id, None)
        if answer is None or answer.done():
            return  # a call given up (its deadline, its caller's cancel)
        if status == _OK:
            answer.set_result(frame[_RESPONSE.size :])
            return
        code = _CODES.get(status, grpc.StatusCode.UNKNOWN)
        message = frame[_RESPONSE.size :].decode(errors="replace")
        answer.set_exception(error_from_status(code, message))

    def oversized(self, head: bytes, length: int) -> None:
        _, kind, call_id = _CANCEL.unpack(head)
        if kind != RESPONSE:
            self.refuse(f"a frame of kind {kind} where a response was due")
            return
        answer = self.waiting.pop(call_id, None)
        if answer is not None and not answer.done():
            message = "response: " + self.too_long(length).decode()
            answer.set_exception(error_from_status(grpc.StatusCode.RESOURCE_EXHAUSTED, message))

    def cancel(self, call_id: int) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_CANCEL.pack(_CANCEL.size - 4, CANCEL, call_id))

    def close(self) -> None:
        self._fail(f"pod {self._pod_id} left the mesh during the call (its connection closed)")
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        why = f": {exc}" if exc else ""
        self._fail(f"pod {self._pod_id}: its connection closed during the call{why}")

    def _fail(self, message: str) -> None:
        self.lost = True
        waiting, self.waiting = self.waiting, {}
        for answer in waiting.values():
            if not answer.done():
                answer.set_exception(Unavailable(message))
