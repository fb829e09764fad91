"""The router against a pod that answers what a test tells it to: a stale copy (NOT_FOUND), a
pod that refuses a load (RESOURCE_EXHAUSTED), and a client deadline carried to the pod.

The stub pod is a real gRPC server on loopback that publishes itself in etcd as a pod does
(instance and placement records under a lease), so the router finds it through its mirror.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest

from mesh.cluster.codec import Keys, encode
from mesh.cluster.records import InstanceRecord, PlacementRecord, PlacementState
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import management_pb2 as mpb
from tests.cluster.etcd_server import EtcdServer
from tests.helpers import (
    RunningPod,
    RunningRouter,
    infer_request,
    output_array,
    running_router,
    wait_until,
)

X = np.ones((1, 64), np.float32)


@dataclass
class StubPod:
    """Answers ModelInfer, LoadModel and ServerLive with `infer`, `load` and `live` (each given
    the gRPC context)."""

    infer: Callable[[Any], bytes] = lambda context: b""
    load: Callable[[Any], bytes] = lambda context: b""
    live: Callable[[Any], bytes] = lambda context: b""  # an empty ServerLiveResponse
    calls: list[str] = field(default_factory=list)
    remaining: list[float | None] = field(default_factory=list)
    ended: threading.Event = field(default_factory=threading.Event)

    # ModelStreamInfer: the responses to send (bytes each), given the gRPC context.
    stream: Callable[[Any], Iterator[bytes]] = lambda context: iter(())

    def streamed(self, requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        next(requests, None)
        self.calls.append("ModelStreamInfer")
        context.add_callback(self.ended.set)
        yield from self.stream(context)

    def handler(self, method: str, answer: Callable[[Any], bytes]) -> grpc.RpcMethodHandler:
        def handle(request: bytes, context: Any) -> bytes:
            self.calls.append(method)
            self.remaining.append(context.time_remaining())
            context.add_callback(self.ended.set)
            return answer(context)

        return grpc.unary_unary_rpc_method_handler(handle)  # bytes in, bytes out


@contextmanager
def stub_pod() -> Iterator[StubPod]:
    """A stub pod's gRPC server on loopback (its address in `.address`)."""
    stub = StubPod()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "inference.GRPCInferenceService",
                {
                    "ModelInfer": stub.handler("ModelInfer", lambda c: stub.infer(c)),
                    "ServerLive": stub.handler("ServerLive", lambda c: stub.live(c)),
                    "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(stub.streamed),
                },
            ),
            grpc.method_handlers_generic_handler(
                "mesh.runtime.v1.Runtime",
                {"LoadModel": stub.handler("LoadModel", lambda c: stub.load(c))},
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stub.address = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    try:
        yield stub
    finally:
        server.stop(0)


@pytest.fixture
def stub(etcd: EtcdServer, prefix: str) -> Iterator[StubPod]:
    """A stub pod for the mesh, published with lots of free room (placement prefers it)."""
    with stub_pod() as running:
        yield running


def publish(
    router: RunningRouter, prefix: str, address: str, holds: str = "", pod_id: str = "stub"
) -> None:
    """Put the stub pod in etcd as a pod would, optionally holding a loaded copy of `holds`;
    it carries the label stub=yes, which a model can prefer."""
    keys = Keys(prefix)

    async def put() -> None:
        store = router.server.store
        lease = await store.grant(30)
        instance = InstanceRecord(
            pod_id,
            address,
            2**40,
            runtimes=("onnx", "xgboost"),
            labels={"stub": "yes"},
            updated_at=time.time(),
        )
        await store.put(keys.instance(pod_id), encode(instance), lease)
        if holds:
            copy = PlacementRecord(holds, pod_id, PlacementState.LOADED, time.time(), 1000)
            await store.put(keys.placement(holds, pod_id), encode(copy), lease)

    router.run(put())
    router.run(router.server.mirror.wait_for(lambda m: pod_id in m.instances))
    if holds:
        router.run(router.server.mirror.wait_for(lambda m: pod_id in m.placements.get(holds, {})))


def register(router: RunningRouter, model_id: str, **options: Any) -> None:
    router.management.RegisterModel(
        mpb.RegisterModelRequest(
            model_id=model_id,
            format="onnx",
            storage_path="mlp",
            options=mpb.ModelOptions(**options),
        )
    )


def metric(router: RunningRouter, name: str, **labels: str) -> float:
    return router.server.registry.get_sample_value(name, labels) or 0.0


def test_a_stale_copy_answering_not_found_is_retried_on_a_fresh_load(
    etcd: EtcdServer, prefix: str, pods: list[RunningPod], stub: StubPod
) -> None:
    def not_found(context: Any) -> bytes:
        context.abort(grpc.StatusCode.NOT_FOUND, "model 'mlp' is not loaded here")

    stub.infer = not_found
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        register(router, "mlp")
        publish(router, prefix, stub.address, holds="mlp")  # type: ignore[attr-defined]
        response = router.v2.ModelInfer(infer_request("mlp", input=X))
        assert output_array(response, "output").shape == (1, 10)
        assert stub.calls == ["ModelInfer"]  # the stale copy was tried first, once
        assert metric(router, "mesh_router_retries_total", reason="NOT_FOUND") == 1
        assert metric(router, "mesh_router_loads_total", outcome="loaded") == 1  # elsewhere


def test_the_only_pod_answering_not_found_is_asked_to_load_the_model_again(
    etcd: EtcdServer, prefix: str, stub: StubPod
) -> None:
    # A one-pod mesh whose pod evicted the model after its record was read: the pod answers
    # NOT_FOUND, and the retry must load the model there, the only place it can go.
    loaded = threading.Event()

    def infer(context: Any) -> bytes:
        if not loaded.is_set():
            context.abort(grpc.StatusCode.NOT_FOUND, "model 'm' is not loaded here")
        return pb.ModelInferResponse(model_name="m").SerializeToString()

    def load(context: Any) -> bytes:
        loaded.set()
        return b""

    stub.infer, stub.load = infer, load
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        register(router, "m")
        publish(router, prefix, stub.address, holds="m")  # type: ignore[attr-defined]
        response = router.v2.ModelInfer(infer_request("m", input=X), timeout=30)
        assert response.model_name == "m"
        assert stub.calls == ["ModelInfer", "LoadModel", "ModelInfer"]


def test_a_pod_refusing_a_load_for_room_is_excluded_and_another_loads_it(
    etcd: EtcdServer, prefix: str, pods: list[RunningPod], stub: StubPod
) -> None:
    def no_room(context: Any) -> bytes:
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "needs 1 MiB, 0 free, 0 evictable")

    stub.load = no_room
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        register(router, "mlp", preferred_labels={"stub": "yes"})  # the stub is chosen first
        publish(router, prefix, stub.address)  # type: ignore[attr-defined]
        response = router.v2.ModelInfer(infer_request("mlp", input=X))
        assert output_array(response, "output").shape == (1, 10)
        assert stub.calls == ["LoadModel"]  # refused once, then not asked again
        assert metric(router, "mesh_router_loads_total", outcome="failed") == 1
        assert metric(router, "mesh_router_loads_total", outcome="loaded") == 1


def test_the_client_deadline_reaches_the_pod_and_ends_the_forward(
    etcd: EtcdServer, prefix: str, pods: list[RunningPod], stub: StubPod
) -> None:
    release = threading.Event()

    def hang(context: Any) -> bytes:
        release.wait(30)
        return pb.ModelInferResponse(model_name="mlp").SerializeToString()

    stub.infer = hang
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        register(router, "mlp")
        publish(router, prefix, stub.address, holds="mlp")  # type: ignore[attr-defined]
        try:
            with pytest.raises(grpc.RpcError) as err:
                router.v2.ModelInfer(infer_request("mlp", input=X), timeout=2)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            # The pod got the client's 2 s deadline (gRPC rounds the timeout it sends up a
            # little), not the router's default of 120 s...
            (remaining,) = stub.remaining
            assert remaining is not None and 0 < remaining < 2.5
            # ...and its call ended when the deadline passed, while the handler still hung.
            wait_until(stub.ended.is_set, timeout=10, what="the forwarded call to end")
            assert not release.is_set()
        finally:
            release.set()


def test_a_slow_pod_that_answers_probes_is_waited_on_past_the_attempt_timeout(
    etcd: EtcdServer, prefix: str, stub: StubPod
) -> None:
    # The attempt timeout leaves only a pod that does not answer at all: one that is slow but
    # there (the stub answers ServerLive, if only with UNIMPLEMENTED) keeps the forward.
    release = threading.Event()

    def slow(context: Any) -> bytes:
        release.wait(30)
        return pb.ModelInferResponse(model_name="m").SerializeToString()

    stub.infer = slow
    with running_router(etcd=etcd.url, etcd_prefix=prefix, attempt_timeout=0.2) as router:
        register(router, "m")
        publish(router, prefix, stub.address, holds="m")  # type: ignore[attr-defined]
        answer = router.v2.ModelInfer.future(infer_request("m", input=X), timeout=30)
        # Several attempt timeouts pass, each probing the pod, before it answers.
        wait_until(lambda: stub.calls.count("ServerLive") >= 3, what="probes of the slow pod")
        release.set()
        assert answer.result().model_name == "m"
        assert stub.calls.count("ModelInfer") == 1  # never given up, never sent elsewhere


def test_a_stream_whose_pod_leaves_before_its_first_answer_is_retried_on_another_copy(
    etcd: EtcdServer, prefix: str
) -> None:
    # The stream goes to the first pod, which leaves the mesh (drained) before it answers: the
    # router closes its channel, which ends the call not with a status but with a cancellation;
    # the router must take it as UNAVAILABLE and send the request to the other copy.
    release = threading.Event()

    def hang(context: Any) -> Iterator[bytes]:
        release.wait(30)
        yield b""

    def answer(context: Any) -> Iterator[bytes]:
        response = pb.ModelInferResponse(model_name="m", id="from-b")
        yield pb.ModelStreamInferResponse(infer_response=response).SerializeToString()

    keys = Keys(prefix)
    with (
        stub_pod() as a,
        stub_pod() as b,
        running_router(etcd=etcd.url, etcd_prefix=prefix, vanished_pod_grace=0.0) as router,
    ):
        a.stream, b.stream = hang, answer
        try:
            register(router, "m")
            publish(router, prefix, a.address, holds="m", pod_id="a")  # type: ignore[attr-defined]
            responses = router.v2.ModelStreamInfer(iter([infer_request("m", input=X)]), timeout=30)
            first: list[Any] = []
            reader = threading.Thread(target=lambda: first.append(next(responses)))
            reader.start()
            wait_until(lambda: a.calls == ["ModelStreamInfer"], what="the stream to reach a")
            publish(router, prefix, b.address, holds="m", pod_id="b")  # type: ignore[attr-defined]
            store = router.server.store
            router.run(store.delete(keys.placement("m", "a")))
            router.run(store.delete(keys.instance("a")))  # a leaves the mesh
            reader.join(30)
            assert first and first[0].infer_response.id == "from-b"
            assert b.calls == ["ModelStreamInfer"]
            wait_until(a.ended.is_set, what="the call to the pod that left to end")
        finally:
            release.set()


def test_a_caller_giving_up_does_not_cancel_the_load_others_wait_for(
    etcd: EtcdServer, prefix: str, stub: StubPod
) -> None:
    release = threading.Event()
    active_at_release: list[bool] = []

    def slow_load(context: Any) -> bytes:
        release.wait(30)
        active_at_release.append(context.is_active())
        return b""  # an empty LoadModelResponse

    stub.load = slow_load
    stub.infer = lambda context: pb.ModelInferResponse(model_name="m").SerializeToString()
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        register(router, "m")
        publish(router, prefix, stub.address)  # type: ignore[attr-defined]
        outcomes: dict[str, Any] = {}

        def call(name: str, timeout: float) -> None:
            try:
                outcomes[name] = router.v2.ModelInfer(infer_request("m", input=X), timeout=timeout)
            except grpc.RpcError as exc:
                outcomes[name] = exc.code()

        impatient = threading.Thread(target=call, args=("impatient", 1.0))
        impatient.start()
        wait_until(lambda: stub.calls == ["LoadModel"], what="the load to start")
        # The shared load is not bounded by the first caller's 1 s: it outlives that caller.
        (load_deadline,) = stub.remaining
        assert load_deadline is not None and load_deadline > 10
        patient = threading.Thread(target=call, args=("patient", 30.0))
        patient.start()
        impatient.join(30)
        assert outcomes["impatient"] == grpc.StatusCode.DEADLINE_EXCEEDED
        release.set()  # the load finishes after the first caller gave up...
        patient.join(30)
        assert active_at_release == [True]  # ...its call was still open...
        assert outcomes["patient"].model_name == "m"  # ...and the second caller got its answer
        assert stub.calls == ["LoadModel", "ModelInfer"]  # from that one load


def test_failed_loads_are_capped_then_expire_and_the_model_is_tried_again(
    etcd: EtcdServer, prefix: str
) -> None:
    def bad_weights(context: Any) -> bytes:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "bad weights")

    # A short memory of failures (the default is 15 minutes), 3 attempts as by default.
    with (
        ExitStack() as stack,
        running_router(
            etcd=etcd.url, etcd_prefix=prefix, failure_ttl=3.0, failure_attempts=3
        ) as router,
    ):
        stubs = [stack.enter_context(stub_pod()) for _ in range(4)]
        for i, s in enumerate(stubs):
            s.load = bad_weights
            s.infer = lambda context: pb.ModelInferResponse(model_name="m").SerializeToString()
            publish(router, prefix, s.address, pod_id=f"stub-{i}")  # type: ignore[attr-defined]
        register(router, "m")

        def loads() -> int:
            return sum(s.calls.count("LoadModel") for s in stubs)

        with pytest.raises(grpc.RpcError) as first:
            router.v2.ModelInfer(infer_request("m", input=X), timeout=30)
        assert first.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "bad weights" in first.value.details()
        assert loads() == 3  # three pods tried, the fourth spared
        with pytest.raises(grpc.RpcError) as again:
            router.v2.ModelInfer(infer_request("m", input=X), timeout=30)
        assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert loads() == 3  # capped: no fourth load while the failures stand
        status = router.management.GetModelStatus(mpb.GetModelStatusRequest(model_id="m"))
        assert status.state == "FAILED" and "bad weights" in status.last_failure
        for s in stubs:  # the weights are fixed; once the failures expire the model loads
            s.load = lambda context: b""

        def served() -> bool:
            try:
                router.v2.ModelInfer(infer_request("m", input=X), timeout=30)
                return True
            except grpc.RpcError:
                return False

        wait_until(served, timeout=30, what="the model to be tried again after expiry")
        assert loads() == 4
