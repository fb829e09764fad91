"""The host tier and the unload check through a real pod's gRPC API.

A real ONNX model evicted on a CPU pod comes back from the host tier with no pull and no file;
on a FakeDevice the models demote themselves and come back; a runtime that keeps device memory
recycles the pod. Pulls go through a counting puller whose release deletes the pulled files; a
model's files are released only once it has left both tiers.
"""

from __future__ import annotations

import shutil
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
from mesh.storageref import StorageRef
from mesh.storagewire import to_message
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
    """LoadModel, then wait until a model it evicted is in the host tier (a file's bytes are
    read after the eviction)."""
    request = rpb.LoadModelRequest(model_id=model_id, storage_path=path, options=options)
    response = pod.control.LoadModel(request, timeout=60)
    pod.run(pod.plane.cache.demotions_read())
    return response


@pytest.fixture
def cpu_pod(store: Path, tmp_path: Path) -> Iterator[tuple[RunningPod, CountingPuller]]:
    puller = CountingPuller(store, tmp_path / "disk")
    # Room for one copy of the 17 MB MLP (a copy measures 21-52 MB of RSS here), 64 MiB of host.
    # ONNX alone: warming torch and transformers too took the pod's start past 30 s under load.
    onnx = RuntimeRegistry.discover(["onnx"])
    with running_pod(artifacts=puller, capacity=60 * MB, host_tier="64Mi", runtimes=onnx) as pod:
        yield pod, puller


def demote_a(pod: RunningPod) -> list[str]:
    """Load "a", then other copies until one evicts it (a copy's measured size varies from
    load to load); the copies loaded."""
    load(pod, "a", "big")
    fillers: list[str] = []
    while "a" not in pod.run(_state(pod)).instance.host_models:
        assert len(fillers) < 4, f"{fillers} did not evict a"
        fillers.append(f"f{len(fillers)}")
        load(pod, fillers[-1], "big")
    return fillers


def test_an_evicted_onnx_model_comes_back_from_the_host_tier_with_no_pull_and_no_file(
    cpu_pod: tuple[RunningPod, CountingPuller], store: Path, tmp_path: Path
) -> None:
    pod, puller = cpu_pod
    fillers = demote_a(pod)
    assert puller.pulls == ["a", *fillers]
    assert "a" not in puller.released  # held while a is on the pod, in either tier
    shutil.rmtree(tmp_path / "disk" / "a")  # the promotion must not need them
    record = pod.run(_state(pod)).instance
    demoted = len(record.host_models)
    assert metric(pod, "mesh_pod_demotions_total") == demoted
    file_bytes = (store / "big" / "model.onnx").stat().st_size
    assert metric(pod, 'mesh_pod_used_bytes{tier="host"}') == demoted * file_bytes
    assert metric(pod, 'mesh_pod_capacity_bytes{tier="host"}') == 64 * 2**20
    assert record.host_used == demoted * file_bytes and record.host_capacity == 64 * 2**20
    assert record.host_model_bytes == (file_bytes,) * demoted
    status = pod.control.RuntimeStatus(rpb.RuntimeStatusRequest())
    assert "a" in {m.model_id for m in status.demoted}
    assert all(m.host_bytes == file_bytes and not m.host_copy_is_model for m in status.demoted)
    assert record.device == "host" and record.device_total > 0 and record.device_used > 0

    load(pod, "a", "big")  # the router's LoadModel on a miss
    assert puller.pulls == ["a", *fillers]  # no pull: promoted from host memory
    assert metric(pod, "mesh_pod_promotions_total") == 1
    assert "a" not in pod.run(_state(pod)).instance.host_models
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    got = output_array(pod.v2.ModelInfer(infer_request("a", input=x)), "output")
    want = ort.InferenceSession(str(store / "big" / "model.onnx")).run(None, {"input": x})[0]
    np.testing.assert_array_equal(got, want)


def test_a_model_promoted_from_the_host_tier_is_demoted_again_when_evicted_again(
    store: Path, tmp_path: Path
) -> None:
    """The host tier's copy of a model that cannot move itself is its pulled file's bytes: that
    file stays held (not released to the puller, whose release deletes it) while the model is
    anywhere on the pod, so a second eviction after a promotion still keeps a copy; it is
    released once the model leaves both tiers. (Sizes are exact on a FakeDevice.)"""
    device = FakeDevice(total=100 * MB)
    runtime = DeviceRuntime(device, demotable=False)  # demotions keep the file's bytes
    puller = CountingPuller(store, tmp_path / "disk")
    with running_pod(
        runtimes=RuntimeRegistry([runtime]),
        artifacts=puller,
        device_memory=device,
        capacity=15 * MB,  # one model on the device
        host_tier="50M",
    ) as pod:
        size = str(10 * MB)
        load(pod, "a", "a.fgpu", size=size)
        load(pod, "b", "b.fgpu", size=size)  # a demoted, from its file
        assert "a" not in puller.released and (tmp_path / "disk" / "a").exists()
        load(pod, "a", "a.fgpu", size=size)  # promoted; b demoted
        load(pod, "b", "b.fgpu", size=size)  # promoted; a demoted again, from its file again
        assert list(pod.run(_state(pod)).instance.host_models) == ["a"]
        load(pod, "a", "a.fgpu", size=size)
        assert puller.pulls == ["a", "b"]  # every promotion without a pull
        assert runtime.from_bytes == ["a", "b", "a"]
        assert metric(pod, "mesh_pod_promotions_total") == 3
        pod.control.UnloadModel(rpb.UnloadModelRequest(model_id="a"))
        wait_until(lambda: "a" in puller.released, what="a's files released once a left the pod")
        assert "b" not in puller.released  # b is in the host tier


def test_an_unload_drops_the_host_copy_and_the_next_load_pulls(
    cpu_pod: tuple[RunningPod, CountingPuller],
) -> None:
    pod, puller = cpu_pod
    fillers = demote_a(pod)
    host_used = metric(pod, 'mesh_pod_used_bytes{tier="host"}')
    response = pod.control.UnloadModel(rpb.UnloadModelRequest(model_id="a"))
    assert not response.was_loaded
    assert metric(pod, 'mesh_pod_used_bytes{tier="host"}') < host_used
    assert "a" not in pod.run(_state(pod)).instance.host_models
    load(pod, "a", "big")
    assert puller.pulls == ["a", *fillers, "a"]
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
        # RuntimeStatus splits each model's memory per tier: a in the host tier, moved there.
        status = pod.control.RuntimeStatus(rpb.RuntimeStatusRequest())
        assert (status.host_capacity_bytes, status.host_used_bytes) == (25 * MB, 10 * MB)
        assert [
            (m.model_id, m.state, m.device_bytes, m.host_bytes, m.host_copy_is_model)
            for m in status.demoted
        ] == [("a", rpb.ModelStatus.DEMOTED, 0, 10 * MB, True)]
        assert {m.model_id: m.device_bytes for m in status.models} == {m: 10 * MB for m in "bcd"}
        load(pod, "a", "a.fgpu", size=str(10 * MB))
        assert runtime.restored == ["a"] and puller.pulls == list("abcd")
        status = pod.control.RuntimeStatus(rpb.RuntimeStatusRequest())
        sizes = {m.model_id: m.measured_bytes for m in status.models}
        assert sizes == {"a": 10 * MB, "c": 10 * MB, "d": 10 * MB}
        assert [m.model_id for m in status.demoted] == ["b"]
        # b went down in its turn; a request for it promotes it (no LoadModel, no pull).
        x = np.arange(4, dtype=np.float32)
        response = pod.v2.ModelInfer(infer_request("b", x=x))
        np.testing.assert_array_equal(output_array(response, "y"), x * 2)
        assert runtime.restored == ["a", "b"] and puller.pulls == list("abcd")


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


def test_mesh_pods_serve_drains_and_exits_75_when_a_runtime_keeps_device_memory(
    store: Path, tmp_path: Path
) -> None:
    import asyncio

    from grpc import aio

    from mesh.gen import runtime_pb2_grpc
    from mesh.pod.server import EXIT_RECYCLE, PodServer, serve
    from mesh.pod.settings import PodSettings

    device = FakeDevice(total=100 * MB)
    settings = PodSettings(
        host="127.0.0.1",
        port=0,
        metrics_port=None,
        capacity=50 * MB,
        storage_dir=store,
        unload_leak_bound="5M",
        unload_settle=0.1,
        drain_timeout=1,
        handoff_timeout=0,
    )
    ports: asyncio.Queue[int] = asyncio.Queue()

    def started(pod: PodServer) -> None:
        ports.put_nowait(pod.port)

    async def main() -> int:
        running = asyncio.create_task(
            serve(
                settings,
                RuntimeRegistry([DeviceRuntime(device)]),
                device_memory=device,
                started=started,
            )
        )
        port = await asyncio.wait_for(ports.get(), 30)
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            control = runtime_pb2_grpc.RuntimeStub(channel)
            for _ in range(2):
                options = {"size": str(10 * MB), "leak": str(3 * MB)}
                await control.LoadModel(
                    rpb.LoadModelRequest(
                        model_id="m", path=str(store / "leaky.fgpu"), options=options
                    )
                )
                await control.UnloadModel(rpb.UnloadModelRequest(model_id="m"))
        return await asyncio.wait_for(running, 60)

    assert asyncio.run(main()) == EXIT_RECYCLE


def test_a_model_registered_anew_is_pulled_not_promoted_from_the_host_tier(
    cpu_pod: tuple[RunningPod, CountingPuller],
) -> None:
    """The host tier keeps the copy of what was loaded: a LoadModel for the same id with other
    runtime options (a new registration) loads it anew through the puller."""
    pod, puller = cpu_pod
    demote_a(pod)
    pulls = len(puller.pulls)
    load(pod, "a", "big", intra_op_threads="2")
    assert len(puller.pulls) == pulls + 1 and puller.pulls[-1] == "a"
    assert "a" not in pod.run(_state(pod)).instance.host_models


@pytest.mark.parametrize(
    "anew",
    [
        {"path": "c.fgpu"},
        {"path": "a.fgpu", "bucket": "other"},
        {"path": "a.fgpu", "sha256": "ab" * 32},
    ],
    ids=["other path", "other bucket", "a digest"],
)
def test_a_model_registered_anew_with_other_storage_is_pulled_not_promoted(
    store: Path, tmp_path: Path, anew: dict[str, str]
) -> None:
    """The host tier keeps the copy of the files it was pulled from: a LoadModel for the same
    id naming other storage (a new registration: other files, another bucket, a digest to
    check) pulls them, rather than promoting the old files; the same storage promotes."""
    device = FakeDevice(total=100 * MB)
    runtime = DeviceRuntime(device)
    puller = CountingPuller(store, tmp_path / "disk")
    size = str(10 * MB)
    with running_pod(
        runtimes=RuntimeRegistry([runtime]),
        artifacts=puller,
        device_memory=device,
        capacity=15 * MB,  # one model on the device
        host_tier="50M",
    ) as pod:

        def load_ref(model_id: str, **ref: str) -> None:
            storage = to_message(StorageRef(**ref))
            request = rpb.LoadModelRequest(
                model_id=model_id, storage=storage, options={"size": size}
            )
            pod.control.LoadModel(request, timeout=60)
            pod.run(pod.plane.cache.demotions_read())

        load_ref("a", path="a.fgpu")
        load_ref("b", path="b.fgpu")  # a demoted
        load_ref("a", path="a.fgpu")  # the same storage: promoted; b demoted
        assert runtime.restored == ["a"] and puller.pulls == ["a", "b"]
        load_ref("b", path="b.fgpu")  # a demoted again
        load_ref("a", **anew)
        assert puller.pulls == ["a", "b", "a"]
        assert runtime.restored == ["a", "b"]  # a was loaded anew, not promoted
