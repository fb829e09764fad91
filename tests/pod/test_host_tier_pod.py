"""The host tier and the unload check through a real pod's gRPC API.

A real ONNX model evicted on a CPU pod comes back from the host tier with no pull and no file;
on a FakeDevice the models demote themselves and come back; a runtime that keeps device memory
recycles the pod. Pulls go through a counting puller whose release deletes the pulled files.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from mesh import examples
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import runtime_pb2 as rpb
from mesh.pod.devices import FakeDevice
from mesh.pod.membership import pod_state
from mesh.runtimes.registry import RuntimeRegistry
from tests.fakes import CountingPuller, DeviceRuntime
from tests.helpers import RunningPod, infer_request, output_array, running_pod, wait_until

MB = 1_000_000


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store")
    examples.onnx_mlp(root / "big", sizes=(64, 2048, 2048, 10))  # 17 MB on disk
    for name in ("a", "b", "c", "d", "leaky", "tidy"):
        (root / f"{name}.fgpu").write_bytes(name.encode() * 100)
    return root


def metric(pod: RunningPod, line_start: str) -> float:
    for line in pod.metrics_text().splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    return 0.0


def load(pod: RunningPod, model_id: str, path: str, **options: str) -> rpb.LoadModelResponse:
    request = rpb.LoadModelRequest(model_id=model_id, storage_path=path, options=options)
    return pod.control.LoadModel(request, timeout=60)


@pytest.fixture
def cpu_pod(store: Path, tmp_path: Path) -> Iterator[tuple[RunningPod, CountingPuller]]:
    puller = CountingPuller(store, tmp_path / "disk")
    # Room for one copy of the 17 MB MLP on the device tier, and 64 MiB of host tier.
    with running_pod(artifacts=puller, capacity=45 * MB, host_tier="64Mi", runtimes=None) as pod:
        yield pod, puller


def test_an_evicted_onnx_model_comes_back_from_the_host_tier_with_no_pull_and_no_file(
    cpu_pod: tuple[RunningPod, CountingPuller], store: Path, tmp_path: Path
) -> None:
    pod, puller = cpu_pod
    load(pod, "a", "big")
    assert load(pod, "b", "big").evicted == ["a"]
    assert puller.pulls == ["a", "b"]
    wait_until(lambda: "a" in puller.released, what="a's files released to the puller")
    assert not (tmp_path / "disk" / "a").exists()  # the pulled files are gone
    assert metric(pod, "mesh_pod_demotions_total") == 1
    file_bytes = (store / "big" / "model.onnx").stat().st_size
    assert metric(pod, 'mesh_pod_used_bytes{tier="host"}') == file_bytes
    assert metric(pod, 'mesh_pod_capacity_bytes{tier="host"}') == 64 * 2**20
    record = pod.run(_state(pod)).instance
    assert record.host_models == ("a",)
    assert record.host_used == file_bytes and record.host_capacity == 64 * 2**20
    assert record.device == "host" and record.device_total > 0 and record.device_used > 0

    response = load(pod, "a", "big")  # the router's LoadModel on a miss
    assert response.evicted == ["b"]
    assert puller.pulls == ["a", "b"]  # no pull: promoted from host memory
    assert metric(pod, "mesh_pod_promotions_total") == 1
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    got = output_array(pod.v2.ModelInfer(infer_request("a", input=x)), "output")
    want = ort.InferenceSession(str(store / "big" / "model.onnx")).run(None, {"input": x})[0]
    np.testing.assert_array_equal(got, want)
    # b went down to the host tier in its turn; a request for it promotes it too.
    got_b = output_array(pod.v2.ModelInfer(infer_request("b", input=x)), "output")
    np.testing.assert_array_equal(got_b, want)
    assert puller.pulls == ["a", "b"]
    assert metric(pod, "mesh_pod_promotions_total") == 2


def test_an_unload_drops_the_host_copy_and_the_next_load_pulls(
    cpu_pod: tuple[RunningPod, CountingPuller],
) -> None:
    pod, puller = cpu_pod
    load(pod, "a", "big")
    load(pod, "b", "big")
    response = pod.control.UnloadModel(rpb.UnloadModelRequest(model_id="a"))
    assert not response.was_loaded
    assert metric(pod, 'mesh_pod_used_bytes{tier="host"}') == 0
    load(pod, "a", "big")
    assert puller.pulls == ["a", "b", "a"]
    assert metric(pod, "mesh_pod_promotions_total") == 0


async def _state(pod: RunningPod):  # type: ignore[no-untyped-def]
    return pod_state(pod.plane, "pod", "addr", {})


def test_on_a_device_models_demote_themselves_and_memory_is_published_per_tier(
    store: Path, tmp_path: Path
) -> None:
    device = FakeDevice(total=100 * MB, baseline=2 * MB)
    runtime = DeviceRuntime(device)
    puller = CountingPuller(store, tmp_path / "disk")
    with running_pod(
        runtimes=RuntimeRegistry([runtime]),
        artifacts=puller,
        device_memory=device,
        capacity=30 * MB,
        host_tier="25M",
    ) as pod:
        for m in "abcd":
            load(pod, m, f"{m}.fgpu", size=str(10 * MB))
        assert runtime.demoted == 1 and runtime.closed == 0
        assert metric(pod, 'mesh_pod_device_memory_bytes{device="fake:0",kind="used"}') == 32 * MB
        assert metric(pod, 'mesh_pod_device_memory_bytes{device="fake:0",kind="total"}') == 100 * MB
        assert metric(pod, 'mesh_pod_used_bytes{tier="host"}') == 10 * MB
        record = pod.run(_state(pod)).instance
        assert (record.device, record.device_total, record.device_used) == (
            "fake:0",
            100 * MB,
            32 * MB,
        )
        load(pod, "a", "a.fgpu", size=str(10 * MB))
        assert runtime.restored == ["a"] and puller.pulls == list("abcd")
        status = pod.control.RuntimeStatus(rpb.RuntimeStatusRequest())
        sizes = {m.model_id: m.measured_bytes for m in status.models}
        assert sizes == {"a": 10 * MB, "c": 10 * MB, "d": 10 * MB}


def test_a_runtime_that_keeps_device_memory_recycles_the_pod(store: Path, tmp_path: Path) -> None:
    for leak, recycles in ((0, 0), (3 * MB, 1)):
        device = FakeDevice(total=100 * MB)
        with running_pod(
            runtimes=RuntimeRegistry([DeviceRuntime(device)]),
            artifacts=CountingPuller(store, tmp_path / f"disk-{leak}"),
            device_memory=device,
            capacity=50 * MB,
            unload_leak_bound="5M",
            unload_settle=0.1,
        ) as pod:
            for _ in range(2):
                load(pod, "m", "leaky.fgpu", size=str(10 * MB), leak=str(leak))
                pod.control.UnloadModel(rpb.UnloadModelRequest(model_id="m"))
            if recycles:
                wait_until(
                    lambda: metric(pod, 'mesh_pod_recycles_total{runtime="fakegpu"}') == 1,
                    what="the recycle counted",
                )
                assert metric(pod, 'mesh_pod_unreturned_bytes{runtime="fakegpu"}') == 6 * MB
                assert not pod.v2.ServerReady(pb.ServerReadyRequest()).ready
                assert pod.server.recycle_requested.is_set()
                with pytest.raises(grpc.RpcError) as err:
                    load(pod, "m2", "tidy.fgpu", size=str(MB))
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            else:
                assert pod.v2.ServerReady(pb.ServerReadyRequest()).ready
                assert metric(pod, 'mesh_pod_unreturned_bytes{runtime="fakegpu"}') == 0
                assert not pod.server.recycle_requested.is_set()
