"""The router over real pods and a real etcd: hits, misses, vmodels, failures, one load per mesh."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from mesh.gen import management_pb2 as mpb
from mesh.gen import runtime_pb2 as rpb
from tests.cluster.etcd_server import EtcdServer
from tests.helpers import RunningPod, infer_request, output_array, running_router, wait_until


def _register(router, model_id: str, fmt: str, path: str, **kw) -> mpb.ModelStatusResponse:  # type: ignore[no-untyped-def]
    return router.management.RegisterModel(
        mpb.RegisterModelRequest(model_id=model_id, format=fmt, storage_path=path, **kw)
    )


def _settled(router, model_id: str) -> None:  # type: ignore[no-untyped-def]
    from mesh.cluster.records import PlacementState

    router.run(
        router.server.mirror.wait_for(
            lambda m: any(
                p.state is PlacementState.LOADED for p in m.placements.get(model_id, {}).values()
            )
        )
    )


def _loads(pods: list[RunningPod]) -> float:
    total = 0.0
    for pod in pods:
        for line in pod.metrics_text().splitlines():
            if line.startswith("mesh_pod_load_seconds_count"):
                total += float(line.split()[-1])
    return total


def test_miss_then_hits_through_the_router_with_tritonclient(
    etcd: EtcdServer, prefix: str, pods: list[RunningPod], model_dir: Path
) -> None:
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        status = _register(router, "mlp", "onnx", "mlp")
        assert status.state == "NOT_LOADED"
        client = triton.InferenceServerClient(router.address)
        assert client.is_server_live()
        assert client.is_server_ready()
        x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
        want = ort.InferenceSession(str(model_dir / "mlp" / "model.onnx")).run(None, {"input": x})[
            0
        ]
        for _ in range(3):
            inp = triton.InferInput("input", [4, 64], "FP32")
            inp.set_data_from_numpy(x)
            np.testing.assert_array_equal(client.infer("mlp", [inp]).as_numpy("output"), want)
        assert client.is_model_ready("mlp")
        meta = client.get_model_metadata("mlp")
        assert [t.name for t in meta.inputs] == ["input"]
        _settled(router, "mlp")  # the pod publishes its copy within a fraction of a second
        status = router.management.GetModelStatus(mpb.GetModelStatusRequest(model_id="mlp"))
        assert status.state == "LOADED"
        assert [c.state for c in status.copies] == ["loaded"]
        assert _loads(pods) == 1
        with pytest.raises(InferenceServerException) as err:
            client.infer("nope", [inp])
        assert err.value.status() == "StatusCode.NOT_FOUND"
        # A pod's own INVALID_ARGUMENT reaches the client unchanged.
        bad = triton.InferInput("input", [4, 63], "FP32")
        bad.set_data_from_numpy(x[:, :63].copy())
        with pytest.raises(InferenceServerException) as err:
            client.infer("mlp", [bad])
        assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
        client.close()


def test_two_routers_concurrent_first_requests_make_one_load(
    etcd: EtcdServer, prefix: str, pods: list[RunningPod]
) -> None:
    with (
        running_router(etcd=etcd.url, etcd_prefix=prefix) as a,
        running_router(etcd=etcd.url, etcd_prefix=prefix) as b,
    ):
        _register(a, "xgb", "xgboost", "xgb")
        b.run(b.server.mirror.wait_for(lambda m: "xgb" in m.models))
        request = infer_request("xgb", input__0=np.ones((1, 64), np.float32))
        errors: list[BaseException] = []
        barrier = threading.Barrier(200)

        def call(router) -> None:  # type: ignore[no-untyped-def]
            try:
                barrier.wait()
                router.v2.ModelInfer(request, timeout=60)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=call, args=((a, b)[i % 2],)) for i in range(200)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert _loads(pods) == 1


def test_vmodel_switches_only_once_the_target_is_loaded(
    etcd: EtcdServer, prefix: str, pods: list[RunningPod]
) -> None:
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        _register(router, "xgb-a", "xgboost", "xgb")
        _register(router, "xgb-b", "xgboost", "xgb-json")
        status = router.management.SetVModel(
            mpb.SetVModelRequest(vmodel_id="fraud", target_model_id="xgb-a", wait=True)
        )
        assert (status.active_model_id, status.transition) == ("xgb-a", "UP_TO_DATE")
        request = infer_request("fraud", input__0=np.ones((2, 64), np.float32))
        assert output_array(router.v2.ModelInfer(request), "output__0").shape == (2,)
        status = router.management.SetVModel(
            mpb.SetVModelRequest(vmodel_id="fraud", target_model_id="xgb-b", wait=True)
        )
        assert (status.active_model_id, status.transition) == ("xgb-b", "UP_TO_DATE")
        response = router.v2.ModelInfer(request)
        assert response.model_name == "xgb-b"
        with_header = router.v2.ModelInfer(
            infer_request("ignored", input__0=np.ones((2, 64), np.float32)),
            metadata=(("mm-vmodel-id", "fraud"),),
        )
        assert with_header.model_name == "xgb-b"


def test_a_vmodel_switch_to_a_model_already_loaded_completes(
    etcd: EtcdServer, prefix: str, pods: list[RunningPod]
) -> None:
    """The transition reads the vmodel back from the router's view once its target is loaded:
    with the target loaded already, it read the view before the view held the switch, found the
    old target, and left the vmodel in transition for good, the old model serving."""
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        _register(router, "xgb-a", "xgboost", "xgb")
        _register(router, "xgb-b", "xgboost", "xgb-json", load_now=True)
        set_vmodel = router.management.SetVModel
        set_vmodel(mpb.SetVModelRequest(vmodel_id="fraud", target_model_id="xgb-a", wait=True))
        status = set_vmodel(
            mpb.SetVModelRequest(vmodel_id="fraud", target_model_id="xgb-b", wait=True)
        )
        assert (status.active_model_id, status.transition) == ("xgb-b", "UP_TO_DATE")
        request = infer_request("fraud", input__0=np.ones((2, 64), np.float32))
        assert router.v2.ModelInfer(request).model_name == "xgb-b"


def test_unregister_unloads_everywhere(
    etcd: EtcdServer, prefix: str, pods: list[RunningPod]
) -> None:
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        _register(router, "mlp", "onnx", "mlp", load_now=True)
        assert router.management.UnregisterModel(mpb.UnregisterModelRequest(model_id="mlp")).existed
        for pod in pods:
            status = pod.control.RuntimeStatus(rpb.RuntimeStatusRequest())
            assert [m.model_id for m in status.models] == []
        with pytest.raises(grpc.RpcError) as err:
            router.v2.ModelInfer(infer_request("mlp", input=np.ones((1, 64), np.float32)))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_failed_load_reports_its_reason_and_others_keep_serving(
    etcd: EtcdServer, prefix: str, pods: list[RunningPod]
) -> None:
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        _register(router, "broken", "onnx", "corrupt")
        _register(router, "mlp", "onnx", "mlp")
        with pytest.raises(grpc.RpcError) as err:
            router.v2.ModelInfer(infer_request("broken", input=np.ones((1, 64), np.float32)))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "broken" in err.value.details()
        status = router.management.GetModelStatus(mpb.GetModelStatusRequest(model_id="broken"))
        assert status.state == "FAILED"
        assert "failed to load" in status.last_failure
        ok = router.v2.ModelInfer(infer_request("mlp", input=np.ones((1, 64), np.float32)))
        assert output_array(ok, "output").shape == (1, 10)


@pytest.mark.slow
def test_zipf_over_50_models_on_pods_with_room_for_10_evicts_and_never_fails(
    etcd: EtcdServer, prefix: str, model_dir: Path
) -> None:
    from contextlib import ExitStack

    from mesh.pod.artifacts import DirectoryArtifacts
    from tests.helpers import running_pod

    mib = 2**20
    with ExitStack() as stack:
        pods = [
            stack.enter_context(
                running_pod(
                    artifacts=DirectoryArtifacts(model_dir),
                    etcd=etcd.url,
                    etcd_prefix=prefix,
                    pod_id=f"zipf-{i}",
                    lease_ttl=5,
                    capacity=2 * mib,  # a copy of the MLP measures 0.2-1.2 MiB
                )
            )
            for i in range(3)
        ]
        router = stack.enter_context(running_router(etcd=etcd.url, etcd_prefix=prefix))
        for i in range(50):
            router.management.RegisterModel(
                mpb.RegisterModelRequest(
                    model_id=f"m{i}",
                    format="onnx",
                    storage_path="mlp",
                    options=mpb.ModelOptions(size_estimate=mib // 4),
                )
            )
        rng = np.random.default_rng(7)
        weights = 1 / np.arange(1, 51) ** 1.1
        picks = rng.choice(50, size=300, p=weights / weights.sum())
        x = np.ones((1, 64), np.float32)
        for i in picks:
            response = router.v2.ModelInfer(infer_request(f"m{i}", input=x), timeout=30)
            assert output_array(response, "output").shape == (1, 10)
        evictions = 0.0
        for pod in pods:
            status = pod.control.RuntimeStatus(rpb.RuntimeStatusRequest())
            assert status.used_bytes <= status.capacity_bytes
            for line in pod.metrics_text().splitlines():
                if line.startswith("mesh_pod_evictions_total"):
                    evictions += float(line.split()[-1])
        assert evictions > 0


def test_the_leader_keeps_min_copies_loaded_and_publishes_totals(
    etcd: EtcdServer, prefix: str, pods: list[RunningPod]
) -> None:
    from prometheus_client import generate_latest

    with running_router(etcd=etcd.url, etcd_prefix=prefix, leader_interval=0.3) as router:
        _register(router, "mlp", "onnx", "mlp", options=mpb.ModelOptions(min_copies=2))

        def copies() -> list[str]:
            status = router.management.GetModelStatus(mpb.GetModelStatusRequest(model_id="mlp"))
            return sorted(c.pod_id for c in status.copies if c.state == "loaded")

        wait_until(lambda: copies() == ["pod-0", "pod-1"], timeout=20)  # with no request at all
        # The totals are published on the leader's next pass after the copies are seen.
        registry = router.server.registry
        wait_until(lambda: registry.get_sample_value("mesh_cluster_copies") == 2.0)
        text = generate_latest(router.server.registry).decode()
        assert "mesh_router_leader 1.0" in text
        assert "mesh_cluster_models_registered 1.0" in text
        assert "mesh_cluster_copies 2.0" in text
        assert "mesh_cluster_pods 2.0" in text
        # The age of the mesh's least recently used model, and each pod's own.
        wait_until(
            lambda: registry.get_sample_value("mesh_cluster_lru_age_seconds"),
            timeout=10,
            what="a cluster LRU age",
        )
        assert 0 < registry.get_sample_value("mesh_cluster_lru_age_seconds") < 60
        assert registry.get_sample_value("mesh_cluster_models_failed") == 0
        for pod in pods:
            assert 0 < pod.server.registry.get_sample_value("mesh_pod_lru_age_seconds") < 60


_KSERVE_CLIENT = """
import asyncio, json, sys
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest

async def main():
    client = InferenceGRPCClient(sys.argv[1], timeout=30)
    assert await client.is_server_ready()
    x = np.array(json.loads(sys.argv[2]), dtype=np.float32)
    tensor = InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    response = await client.infer(InferRequest(model_name="mlp", infer_inputs=[tensor]))
    print(json.dumps(response.outputs[0].as_numpy().tolist()))
    await client.close()

asyncio.run(main())
"""


def test_kserve_sdk_grpc_client_through_the_router(
    etcd: EtcdServer, prefix: str, pods: list[RunningPod], model_dir: Path, tmp_path: Path
) -> None:
    """kserve's InferenceGRPCClient, unchanged (in its own process: kserve and tritonclient
    register the same protobuf names and cannot share one)."""
    import json
    import subprocess
    import sys

    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        _register(router, "mlp", "onnx", "mlp")
        x = np.random.default_rng(3).standard_normal((2, 64)).astype(np.float32)
        script = tmp_path / "kserve_client.py"
        script.write_text(_KSERVE_CLIENT)
        done = subprocess.run(
            [sys.executable, str(script), router.address, json.dumps(x.tolist())],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        got = np.array(json.loads(done.stdout.strip().splitlines()[-1]), dtype=np.float32)
        session = ort.InferenceSession(str(model_dir / "mlp" / "model.onnx"))
        np.testing.assert_allclose(got, session.run(None, {"input": x})[0], rtol=1e-6)


@pytest.mark.slow
def test_a_hot_model_gets_another_copy_and_loses_it_when_idle(
    etcd: EtcdServer, prefix: str, pods: list[RunningPod]
) -> None:
    import time

    settings = {
        "leader_interval": 0.3, "copy_add_rate": 5.0, "copy_add_after": 1.0,
        "copy_remove_rate": 1.0, "copy_remove_after": 1.0, "copy_half_life": 0.5,
    }  # fmt: skip
    with running_router(etcd=etcd.url, etcd_prefix=prefix, **settings) as router:
        _register(router, "hot", "xgboost", "xgb")
        request = infer_request("hot", input__0=np.ones((1, 64), np.float32))

        def copies() -> int:
            status = router.management.GetModelStatus(mpb.GetModelStatusRequest(model_id="hot"))
            return sum(c.state == "loaded" for c in status.copies)

        deadline = time.monotonic() + 20
        while copies() < 2 and time.monotonic() < deadline:
            for _ in range(20):  # ~40 requests a second, well above 5 per copy
                router.v2.ModelInfer(request)
        assert copies() == 2
        deadline = time.monotonic() + 20
        while copies() > 1 and time.monotonic() < deadline:  # idle now
            time.sleep(0.2)
        assert copies() == 1


def test_loads_in_flight_elsewhere_are_charged_their_own_size(
    etcd: EtcdServer, prefix: str, model_dir: Path
) -> None:
    """A copy being loaded is charged its model's size, not the default guess: with the
    default (256 MiB) every small pod with a load in flight looked full."""
    import time
    from contextlib import ExitStack

    from mesh.cluster.codec import Keys, encode
    from mesh.cluster.records import PlacementRecord, PlacementState
    from mesh.pod.artifacts import DirectoryArtifacts
    from tests.helpers import running_pod

    with ExitStack() as stack:
        for i in range(2):
            stack.enter_context(
                running_pod(
                    artifacts=DirectoryArtifacts(model_dir),
                    etcd=etcd.url,
                    etcd_prefix=prefix,
                    pod_id=f"small-{i}",
                    lease_ttl=5,
                    capacity=64 * 2**20,
                )
            )
        router = stack.enter_context(running_router(etcd=etcd.url, etcd_prefix=prefix))
        small = mpb.ModelOptions(size_estimate=2**20)
        _register(router, "busy", "onnx", "mlp", options=small)
        _register(router, "mlp", "onnx", "mlp", options=small)
        keys = Keys(prefix)

        async def loading_everywhere() -> None:  # as if another router were loading "busy"
            store = router.server.store
            lease = await store.grant(30)
            for i in range(2):
                record = PlacementRecord("busy", f"small-{i}", PlacementState.LOADING, time.time())
                await store.put(keys.placement("busy", f"small-{i}"), encode(record), lease)

        router.run(loading_everywhere())
        router.run(router.server.mirror.wait_for(lambda m: len(m.placements.get("busy", {})) == 2))
        response = router.v2.ModelInfer(infer_request("mlp", input=np.ones((1, 64), np.float32)))
        assert output_array(response, "output").shape == (1, 10)


def test_the_leader_finishes_a_transition_its_router_left_behind(
    etcd: EtcdServer, prefix: str, pods: list[RunningPod]
) -> None:
    import time

    from mesh.cluster.codec import encode
    from mesh.cluster.records import VModelRecord

    with running_router(etcd=etcd.url, etcd_prefix=prefix, leader_interval=0.3) as router:
        _register(router, "fraud-a", "xgboost", "xgb")
        _register(router, "fraud-b", "xgboost", "xgb-json")
        # What a router that died mid-transition leaves: clients on a, b never loaded.
        stalled = VModelRecord("fraud", target="fraud-b", previous="fraud-a")
        router.run(router.server.store.put(router.server.router.keys.vmodel("fraud"),
                                           encode(stalled)))  # fmt: skip
        x = np.ones((1, 64), np.float32)
        router.v2.ModelInfer(infer_request("fraud", input__0=x))  # served by fraud-a meanwhile
        deadline = time.monotonic() + 20
        while True:
            status = router.management.GetVModelStatus(
                mpb.GetVModelStatusRequest(vmodel_id="fraud")
            )
            if status.transition == "UP_TO_DATE":
                break
            assert time.monotonic() < deadline, "the transition was never finished"
            time.sleep(0.2)
        assert status.active_model_id == "fraud-b"
        loaded = router.management.GetModelStatus(mpb.GetModelStatusRequest(model_id="fraud-b"))
        assert loaded.state == "LOADED"  # loaded before the switch, not on the next request


def test_preferred_labels_are_registered_and_reported(etcd: EtcdServer, prefix: str) -> None:
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        options = mpb.ModelOptions(preferred_labels={"gpu": "true"})
        _register(router, "prefers-gpu", "onnx", "mlp", options=options)
        status = router.management.GetModelStatus(mpb.GetModelStatusRequest(model_id="prefers-gpu"))
        assert dict(status.options.preferred_labels) == {"gpu": "true"}
        assert dict(status.options.required_labels) == {}


@pytest.mark.slow
def test_a_vmodel_switch_to_a_model_that_fails_is_blocked_and_the_old_one_keeps_serving(
    etcd: EtcdServer, prefix: str, pods: list[RunningPod]
) -> None:
    with running_router(etcd=etcd.url, etcd_prefix=prefix, leader_interval=0.3) as router:
        _register(router, "scorer-a", "onnx", "mlp")
        _register(router, "scorer-bad", "onnx", "corrupt")
        _register(router, "scorer-b", "onnx", "mlp")
        set_vmodel = router.management.SetVModel
        set_vmodel(mpb.SetVModelRequest(vmodel_id="scorer", target_model_id="scorer-a", wait=True))
        set_vmodel(mpb.SetVModelRequest(vmodel_id="scorer", target_model_id="scorer-bad"))

        def status() -> mpb.VModelStatusResponse:
            return router.management.GetVModelStatus(mpb.GetVModelStatusRequest(vmodel_id="scorer"))

        blocked = wait_until(
            lambda: status() if status().transition == "BLOCKED_BY_FAILED_LOAD" else None,
            what="the transition to be blocked",
        )
        assert (blocked.active_model_id, blocked.target_model_id) == ("scorer-a", "scorer-bad")
        assert "INVALID_PROTOBUF" in blocked.last_failure  # the load error, for the operator
        x = np.ones((1, 64), np.float32)
        response = router.v2.ModelInfer(infer_request("scorer", input=x))
        assert response.model_name == "scorer-a"  # clients keep the old model meanwhile
        # Pointing it at a model that loads unblocks it.
        set_vmodel(mpb.SetVModelRequest(vmodel_id="scorer", target_model_id="scorer-b", wait=True))
        final = status()
        assert (final.active_model_id, final.transition) == ("scorer-b", "UP_TO_DATE")
        assert router.v2.ModelInfer(infer_request("scorer", input=x)).model_name == "scorer-b"
