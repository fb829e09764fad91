"""Test helpers: a real pod on a free loopback port, run on an event loop in its own thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import grpc

from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import grpc_predict_v2_pb2_grpc as pb_grpc
from mesh.gen import runtime_pb2_grpc
from mesh.lifecycle import free_port as free_port  # the one copy, re-exported for the tests
from mesh.pod.server import PodServer
from mesh.pod.settings import PodSettings
from mesh.runtimes.registry import RuntimeRegistry

T = TypeVar("T")


class RunningPod:
    """A PodServer on a private loop thread, with sync clients for the tests."""

    def __init__(self, server: PodServer, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.loop = loop
        self.address = f"127.0.0.1:{server.port}"
        options = [
            ("grpc.max_receive_message_length", 256 * 2**20),
            ("grpc.max_send_message_length", 256 * 2**20),
        ]
        self.channel = grpc.insecure_channel(self.address, options=options)
        self.v2 = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.control = runtime_pb2_grpc.RuntimeStub(self.channel)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def plane(self) -> Any:
        return self.server.plane

    def metrics_text(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.server.registry).decode()


def wait_until(check: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
    """Poll `check` until it returns something true (returned), failing after `timeout`."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        time.sleep(0.05)
    return value


async def wait_until_async(check: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
    """`wait_until` for a test running on an event loop: the loop keeps running while it polls."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        await asyncio.sleep(0.01)
    return value


@contextmanager
def running_pod(
    runtimes: RuntimeRegistry | None = None,
    artifacts: Any = None,
    device_memory: Any = None,
    **settings: Any,
) -> Iterator[RunningPod]:
    settings.setdefault("host", "127.0.0.1")
    settings.setdefault("port", 0)
    settings.setdefault("metrics_port", None)
    settings.setdefault("capacity", 2**30)
    settings.setdefault("drain_timeout", 5)
    settings.setdefault("handoff_timeout", 0)  # tests that hand models off ask for it
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-pod-loop", daemon=True)
    thread.start()
    server = PodServer(
        PodSettings(**settings),
        runtimes=runtimes,
        artifacts=artifacts,
        device_memory=device_memory,
    )
    # A bound for a hang, not a wait: a pod's start warms every runtime it serves (torch and
    # transformers alone took 14 s at a load of 7 here, past 30 s on a busier machine).
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(180)
    pod = RunningPod(server, loop)
    try:
        yield pod
    finally:
        pod.channel.close()
        asyncio.run_coroutine_threadsafe(server.aclose(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def infer_request(model: str, **arrays: Any) -> pb.ModelInferRequest:
    """A raw-contents request from numpy arrays, named by keyword."""
    import numpy as np

    from mesh.tensors import datatype_of

    request = pb.ModelInferRequest(model_name=model)
    for name, array in arrays.items():
        array = np.asarray(array)
        tensor = request.inputs.add(name=name, datatype=datatype_of(array.dtype))
        tensor.shape.extend(array.shape)
        request.raw_input_contents.append(array.tobytes())
    return request


def output_array(response: pb.ModelInferResponse, name: str) -> Any:
    import numpy as np

    from mesh.tensors import DATATYPES

    for i, tensor in enumerate(response.outputs):
        if tensor.name == name:
            dtype = DATATYPES[tensor.datatype]
            return np.frombuffer(response.raw_output_contents[i], dtype=dtype).reshape(
                tuple(tensor.shape)
            )
    raise KeyError(name)


class RunningRouter:
    """A RouterServer on a private loop thread, with sync stubs."""

    def __init__(self, server: Any, loop: asyncio.AbstractEventLoop) -> None:
        from mesh.gen import management_pb2_grpc

        self.server = server
        self.loop = loop
        self.address = f"127.0.0.1:{server.port}"
        # The REST front's host:port (tritonclient.http's `url`), when it serves one.
        self.rest = f"127.0.0.1:{server.rest_port}" if server.rest_port else ""
        self.channel = grpc.insecure_channel(self.address)
        self.v2 = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.management = management_pb2_grpc.ManagementStub(self.channel)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@contextmanager
def running_router(**settings: Any) -> Iterator[RunningRouter]:
    from mesh.router.server import RouterServer
    from mesh.router.settings import RouterSettings

    settings.setdefault("host", "127.0.0.1")
    settings.setdefault("port", 0)
    settings.setdefault("rest_port", 0)
    settings.setdefault("metrics_port", None)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-router-loop", daemon=True)
    thread.start()
    server = RouterServer(RouterSettings(**settings))
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)
    router = RunningRouter(server, loop)
    try:
        yield router
    finally:
        router.channel.close()
        asyncio.run_coroutine_threadsafe(server.aclose(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
