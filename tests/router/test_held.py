"""Scale from zero, seen from the router, over a real etcd: a request for a model no pod can
serve is held with its demand in etcd and answered once a pod registers; past its deadline it
is DEADLINE_EXCEEDED (504 on REST and the OpenAI routes); a full hold queue is
RESOURCE_EXHAUSTED (429)."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from prometheus_client import generate_latest

from mesh import examples
from mesh.cli import main
from mesh.cluster.demand import read_demand
from mesh.gen import management_pb2 as mpb
from mesh.llm.protocol import GENERATIVE_FORMAT
from mesh.pod.artifacts import DirectoryArtifacts
from mesh.runtimes.registry import RuntimeRegistry
from tests.cluster.etcd_server import EtcdServer
from tests.helpers import (
    RunningRouter,
    infer_request,
    output_array,
    running_pod,
    running_router,
    wait_until,
)


@pytest.fixture(scope="module")
def identity_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("held-models")
    examples.onnx_identity(root / "identity", datatypes=("FP32",))
    return root


def _register(router: RunningRouter, model_id: str, fmt: str = "onnx", size: int = 0) -> None:
    router.management.RegisterModel(
        mpb.RegisterModelRequest(
            model_id=model_id,
            format=fmt,
            storage_path="identity",
            options=mpb.ModelOptions(size_estimate=size),
        )
    )


def _demand(router: RunningRouter, prefix: str) -> list[object]:
    return router.run(read_demand(router.server.store, prefix))  # type: ignore[no-any-return]


def _request() -> bytes:
    return infer_request("identity", in_FP32=np.arange(3, dtype=np.float32))


def _metric(router: RunningRouter, name: str) -> float:
    for line in generate_latest(router.server.registry).decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_held_request_publishes_its_demand_and_is_answered_once_a_pod_registers(
    etcd: EtcdServer, prefix: str, identity_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        _register(router, "identity", size=4096)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            answer = pool.submit(router.v2.ModelInfer, _request(), timeout=60)
            # Held: its demand is in etcd for a pool controller, with what it wants.
            (demand,) = wait_until(lambda: _demand(router, prefix), what="a demand record")
            assert (demand.pool, demand.model_id, demand.held) == ("default", "identity", 1)
            assert demand.bytes_wanted == 4096 and demand.since > 0
            assert _metric(router, "mesh_router_held_requests") == 1
            assert not answer.done()
            # The management API reports it (what the Kubernetes controller sizes pools by),
            # and `mesh status` shows it.
            status = router.management.GetMeshStatus(mpb.GetMeshStatusRequest(), timeout=10)
            assert [(d.pool, d.model_id, d.held) for d in status.demand] == [
                ("default", "identity", 1)
            ]
            assert main(["status", "--router", router.address]) == 0
            out = capsys.readouterr().out
            assert "HELD FOR" in out
            (row,) = [line.split() for line in out.splitlines() if line.startswith("default ")]
            assert row[:2] == ["default", "identity"] and row[3] == "1"
            with running_pod(
                artifacts=DirectoryArtifacts(identity_dir), etcd=etcd.url, etcd_prefix=prefix,
                pod_id="pod-late", lease_ttl=5, runtimes=RuntimeRegistry.discover(["onnx"]),
            ):  # fmt: skip
                response = answer.result(60)
                got = output_array(response, "out_FP32")
                np.testing.assert_array_equal(got, np.arange(3, dtype=np.float32))
                wait_until(lambda: not _demand(router, prefix), what="the demand gone")
                assert _metric(router, "mesh_router_held_requests") == 0
                assert _metric(router, "mesh_router_cold_start_seconds_count") == 1
                # With a pod up, the next request is not held (no second cold start).
                router.v2.ModelInfer(_request(), timeout=30)
                assert _metric(router, "mesh_router_cold_start_seconds_count") == 1


def test_a_request_held_past_its_deadline_is_deadline_exceeded_and_504_over_rest_and_openai(
    etcd: EtcdServer, prefix: str
) -> None:
    with running_router(etcd=etcd.url, etcd_prefix=prefix, load_timeout=1.5) as router:
        _register(router, "identity")
        with pytest.raises(grpc.RpcError) as err:
            router.v2.ModelInfer(_request(), timeout=1.0)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # Over REST the deadline is the request's own parameter: the answer is the router's.
        body = {
            "inputs": [{"name": "in_FP32", "shape": [1], "datatype": "FP32", "data": [1.0]}],
            "parameters": {"timeout": 1_000_000},  # Triton's request timeout, in µs
        }
        reply = httpx.post(f"http://{router.rest}/v2/models/identity/infer", json=body, timeout=30)
        assert reply.status_code == 504, reply.text
        assert "identity" in reply.json()["error"] and "no pod" in reply.json()["error"]
        # No deadline on the OpenAI routes: the router's load timeout bounds the hold.
        _register(router, "tiny-lm", fmt=GENERATIVE_FORMAT)
        reply = httpx.post(
            f"http://{router.rest}/v1/completions",
            json={"model": "tiny-lm", "prompt": "hello", "max_tokens": 2},
            timeout=30,
        )
        assert reply.status_code == 504, reply.text
        assert reply.json()["error"]["type"] == "timeout"
        # Nothing held any more: nothing left in etcd (the records go in the background).
        wait_until(lambda: not _demand(router, prefix), what="the demand records gone")


def test_a_full_hold_queue_is_resource_exhausted_and_429_over_rest(
    etcd: EtcdServer, prefix: str
) -> None:
    with running_router(etcd=etcd.url, etcd_prefix=prefix, max_held_requests=1) as router:
        _register(router, "identity")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(router.v2.ModelInfer, _request(), timeout=3)
            wait_until(lambda: _metric(router, "mesh_router_held_requests") == 1, what="held")
            with pytest.raises(grpc.RpcError) as err:
                router.v2.ModelInfer(_request(), timeout=30)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_held" in (err.value.details() or "")
            reply = httpx.post(
                f"http://{router.rest}/v2/models/identity/infer",
                json={
                    "inputs": [{"name": "in_FP32", "shape": [1], "datatype": "FP32", "data": [1]}]
                },
                timeout=30,
            )
            assert reply.status_code == 429, reply.text
            with pytest.raises(grpc.RpcError) as held:
                first.result(30)
            assert held.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
