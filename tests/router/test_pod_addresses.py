"""Pods whose records carry addresses that cannot be used (mesh.addresses), in a real mesh: the
router neither breaks nor answers UNKNOWN; such a pod is reached over gRPC (a bad data address)
or answers UNAVAILABLE naming itself (a bad gRPC address), and the others go on serving."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc import aio

from mesh.cluster.codec import Keys, encode
from mesh.cluster.etcd import EtcdConfig, EtcdStore
from mesh.cluster.records import InstanceRecord, PlacementRecord, PlacementState
from mesh.errors import StorageUnavailable
from mesh.gen import management_pb2 as mpb
from mesh.gen import runtime_pb2_grpc
from mesh.grpcutil import ErrorInterceptor
from mesh.pod.artifacts import DirectoryArtifacts
from mesh.router.grpcpods import PodClient
from tests.cluster.etcd_server import EtcdServer
from tests.helpers import (
    RunningPod,
    RunningRouter,
    infer_request,
    running_pod,
    running_router,
    wait_until,
)

BAD = ["", "nonsense", "host:notaport", "127.0.0.1:99999"]


def _write(etcd: EtcdServer, prefix: str, *records: InstanceRecord | PlacementRecord) -> None:
    """Write records as a pod would (without its lease: they stay for the test)."""

    async def put() -> None:
        store = EtcdStore(EtcdConfig.parse(etcd.url))
        keys = Keys(prefix)
        try:
            for r in records:
                if isinstance(r, InstanceRecord):
                    await store.put(keys.instance(r.pod_id), encode(r))
                else:
                    await store.put(keys.placement(r.model_id, r.pod_id), encode(r))
        finally:
            await store.aclose()

    asyncio.run(put())


def _copy_on(pod_id: str) -> PlacementRecord:
    return PlacementRecord("mlp", pod_id, PlacementState.LOADED, time.time(), 10_000)


@contextlib.contextmanager
def _mesh(
    etcd: EtcdServer, prefix: str, model_dir: Path, **pod: Any
) -> Iterator[tuple[RunningPod, RunningRouter]]:
    """pod-0, real, and a router; "mlp" registered, loaded nowhere yet."""
    with (
        running_pod(
            artifacts=DirectoryArtifacts(model_dir),
            etcd=etcd.url,
            etcd_prefix=prefix,
            pod_id="pod-0",
            lease_ttl=5,
            **pod,
        ) as running,
        running_router(etcd=etcd.url, etcd_prefix=prefix) as routing,
    ):
        routing.management.RegisterModel(
            mpb.RegisterModelRequest(model_id="mlp", format="onnx", storage_path="mlp")
        )
        wait_until(lambda: "pod-0" in routing.server.mirror.instances, what="pod-0's record")
        yield running, routing


def _only_pod(
    etcd: EtcdServer, prefix: str, pod: RunningPod, router: RunningRouter, pod_id: str, address: str
) -> None:
    """pod-0 drained, and a record of `pod_id` at `address` beside it: the only pod a miss may
    choose, once the router's mirror shows both."""
    good = router.server.mirror.instances["pod-0"]
    _write(etcd, prefix, dataclasses.replace(good, pod_id=pod_id, address=address, data_address=""))
    pod.plane.drain()  # pod-0 takes no new load
    wait_until(
        lambda: (
            router.server.mirror.instances["pod-0"].draining
            and pod_id in router.server.mirror.instances
        ),
        what=f"pod-0 draining and {pod_id} in the mirror",
    )


def _infer(router: RunningRouter) -> Any:
    request = infer_request("mlp", input=np.ones((1, 64), np.float32))
    return router.v2.ModelInfer(request, timeout=30)


@pytest.mark.parametrize("address", BAD, ids=repr)
def test_a_pod_with_a_bad_grpc_address_is_passed_over_for_a_good_one(
    etcd: EtcdServer, prefix: str, model_dir: Path, address: str
) -> None:
    with _mesh(etcd, prefix, model_dir) as (_, router):
        good = router.server.mirror.instances["pod-0"]
        bad = dataclasses.replace(good, pod_id="pod-bad", address=address, data_address="")
        # The mirror says pod-bad holds the only copy: the request goes there first.
        _write(etcd, prefix, bad, _copy_on("pod-bad"))
        wait_until(
            lambda: "pod-bad" in router.server.mirror.placements.get("mlp", {}),
            what="pod-bad's copy in the mirror",
        )
        for _ in range(3):
            assert _infer(router).outputs[0].shape == [1, 10]
        client = router.server.pool.client("pod-bad", address, "")
        assert router.run(_failure(client.live(1.0))) == (
            "PodUnreachable",
            f"pod pod-bad cannot be reached at the address in its record: {address!r}",
        )


async def _failure(call: Any) -> tuple[str, str]:
    try:
        await call
    except Exception as exc:
        return type(exc).__name__, str(exc).split(": the port")[0].split(" is not")[0]
    raise AssertionError("the call succeeded")


@pytest.mark.parametrize("address", BAD, ids=repr)
def test_a_miss_with_no_reachable_pod_is_unavailable_naming_the_pod(
    etcd: EtcdServer, prefix: str, model_dir: Path, address: str
) -> None:
    with _mesh(etcd, prefix, model_dir) as (pod, router):
        _only_pod(etcd, prefix, pod, router, "pod-bad", address)
        with pytest.raises(grpc.RpcError) as err:
            _infer(router)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "pod-bad cannot be reached at the address in its record" in err.value.details()
        assert repr(address) in err.value.details()


@pytest.mark.parametrize("data_address", BAD[1:], ids=repr)
def test_a_pod_with_a_bad_data_address_is_served_over_grpc_and_logged_once(
    etcd: EtcdServer,
    prefix: str,
    model_dir: Path,
    data_address: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # pod-x is pod-0 under another name, with a data address that cannot be used: a request
    # sent to pod-x reaches pod-0 over gRPC, which loads mlp from its model directory.
    with _mesh(etcd, prefix, model_dir, models=str(model_dir)) as (_, router):
        good = router.server.mirror.instances["pod-0"]
        alias = dataclasses.replace(good, pod_id="pod-x", data_address=data_address)
        _write(etcd, prefix, alias, _copy_on("pod-x"))
        wait_until(
            lambda: "pod-x" in router.server.mirror.placements.get("mlp", {}),
            what="pod-x's copy in the mirror",
        )
        with caplog.at_level(logging.WARNING, logger="mesh.router.grpcpods"):
            for _ in range(3):
                assert _infer(router).outputs[0].shape == [1, 10]
            client = router.server.pool.client("pod-x", good.address, data_address)
        assert type(client) is PodClient
        warned = [r.getMessage() for r in caplog.records if "pod-x" in r.getMessage()]
        assert len(warned) == 1, warned
        assert "its data address cannot be used, inference goes over gRPC" in warned[0]
        assert repr(data_address) in warned[0]


def test_misses_that_reached_no_pod_do_not_hold_the_model_back_once_a_pod_can_load_it(
    etcd: EtcdServer, prefix: str, model_dir: Path
) -> None:
    # A pod that cannot be reached says nothing about the model: those misses are UNAVAILABLE,
    # and they neither use up the model's failed-load attempts (3 within 15 minutes) nor keep
    # it from the next pod. They once did: the fourth such miss was FAILED_PRECONDITION, and
    # the model stayed unservable for 15 minutes whatever pods came.
    with _mesh(etcd, prefix, model_dir) as (pod, router):
        _only_pod(etcd, prefix, pod, router, "pod-bad", "nonsense")
        for _ in range(5):
            with pytest.raises(grpc.RpcError) as err:
                _infer(router)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
        with running_pod(
            artifacts=DirectoryArtifacts(model_dir), etcd=etcd.url, etcd_prefix=prefix,
            pod_id="pod-1", lease_ttl=5,
        ):  # fmt: skip
            wait_until(lambda: "pod-1" in router.server.mirror.instances, what="pod-1's record")
            assert _infer(router).outputs[0].shape == [1, 10]


class _StorageDown(runtime_pb2_grpc.RuntimeServicer):
    """A pod's control API whose every load finds the model's storage unreachable: the pod
    answers UNAVAILABLE itself, through the interceptor every mesh server has."""

    async def LoadModel(self, request: Any, context: Any) -> Any:
        raise StorageUnavailable(f"{request.model_id}: the bucket did not answer (503)")


@contextlib.contextmanager
def _storage_down_pod() -> Iterator[str]:
    """That control API on a loopback port, served from a thread of its own: its address."""
    started: concurrent.futures.Future[str] = concurrent.futures.Future()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def serve() -> None:
        server = aio.server(interceptors=[ErrorInterceptor()])
        runtime_pb2_grpc.add_RuntimeServicer_to_server(_StorageDown(), server)  # type: ignore[no-untyped-call]
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        started.set_result(f"127.0.0.1:{port}")
        await stop.wait()
        await server.stop(None)

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        yield started.result(timeout=30)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


def test_a_pod_that_answers_unavailable_for_a_load_counts_against_the_model(
    etcd: EtcdServer, prefix: str, model_dir: Path
) -> None:
    # Unlike a pod not reached, a pod that answered UNAVAILABLE (the model's storage is down)
    # says something of the model: the load counts as failed there, and the model's status
    # shows why. Counted as unreachable, misses were sent back to it every 10 s, answered
    # UNAVAILABLE for ever, with no failure shown and no attempt used up.
    with _storage_down_pod() as address, _mesh(etcd, prefix, model_dir) as (pod, router):
        _only_pod(etcd, prefix, pod, router, "pod-s", address)
        codes = []
        for _ in range(2):
            with pytest.raises(grpc.RpcError) as err:
                _infer(router)
            codes.append(err.value.code())
        # Its one pod failed to load it: that pod is passed over for the model, as any pod
        # where a load failed, and the miss says so.
        assert codes == [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION]
        assert "failed to load it recently (pod-s)" in err.value.details()
        status = router.management.GetModelStatus(mpb.GetModelStatusRequest(model_id="mlp"))
        assert "the bucket did not answer" in status.last_failure
