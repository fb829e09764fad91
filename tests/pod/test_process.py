"""`mesh pod` as a user runs it: a real process, signals, and memory that comes back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton

from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import grpc_predict_v2_pb2_grpc as pb_grpc
from mesh.gen import health_pb2 as hpb
from mesh.gen import health_pb2_grpc, runtime_pb2_grpc
from mesh.gen import runtime_pb2 as rpb
from tests.helpers import free_port, infer_request, output_array, wait_until

ROOT = Path(__file__).resolve().parents[2]
MESH = Path(sys.executable).parent / "mesh"


def _wait_ready(address: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"pod exited with {proc.returncode}: {proc.stderr.read().decode()}"
            )  # type: ignore[union-attr]
        try:
            if stub.ServerReady(pb.ServerReadyRequest(), timeout=1).ready:
                return
        except grpc.RpcError:
            time.sleep(0.1)
    raise AssertionError("pod did not become ready")


@contextmanager
def pod_process(args: list[str]) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    proc = subprocess.Popen(
        [*args[:1], *(a.replace("{port}", str(port)) for a in args[1:])],
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    address = f"127.0.0.1:{port}"
    try:
        _wait_ready(address, proc)
        yield address, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        if proc.stderr is not None:
            proc.stderr.close()


def rss_of(pid: int) -> int:
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
def test_mesh_pod_serves_a_models_directory_to_tritonclient(model_dir: Path) -> None:
    cmd = [str(MESH), "pod", "--models", str(model_dir), "--host", "127.0.0.1",
           "--port", "{port}", "--no-metrics", "--capacity", "1Gi"]  # fmt: skip
    with pod_process(cmd) as (address, proc):
        client = triton.InferenceServerClient(address)
        x = np.ones((2, 64), np.float32)
        inp = triton.InferInput("input__0", [2, 64], "FP32")
        inp.set_data_from_numpy(x)
        assert client.infer("xgb", [inp]).as_numpy("output__0").shape == (2,)
        client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_bad_settings_exit_with_a_clear_message() -> None:
    done = subprocess.run(
        [str(MESH), "pod", "--capacity", "lots", "--no-metrics"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "capacity" in done.stderr
    assert "not a byte size" in done.stderr


@pytest.mark.slow
def test_sigterm_drains_requests_in_flight_then_exits(tmp_path: Path) -> None:
    (tmp_path / "slow.fake").write_bytes(b"\0" * 100)
    (tmp_path / "mesh.json").write_text(json.dumps({"options": {"predict_delay": "2"}}))
    cmd = [sys.executable, "-m", "tests.pod.slow_pod", str(tmp_path), "{port}"]
    with pod_process(cmd) as (address, proc):
        stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))
        stub.ModelMetadata(pb.ModelMetadataRequest(name="slow"))  # loaded before the clock runs
        result: dict[str, object] = {}

        def slow_call() -> None:
            try:
                request = infer_request("slow", x=np.arange(4, dtype=np.float32))
                result["response"] = stub.ModelInfer(request, timeout=30)
            except grpc.RpcError as exc:
                result["error"] = exc

        control = runtime_pb2_grpc.RuntimeStub(grpc.insecure_channel(address))

        def in_flight() -> int:
            status = control.RuntimeStatus(rpb.RuntimeStatusRequest(), timeout=5)
            return sum(m.in_flight for m in status.models)

        caller = threading.Thread(target=slow_call)
        caller.start()
        wait_until(lambda: in_flight() == 1, what="the request in flight, sleeping in the model")
        proc.send_signal(signal.SIGTERM)
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(address))

        def refusing_new_calls() -> bool:  # not ready, or no longer taking calls at all
            try:
                check = health.Check(hpb.HealthCheckRequest(), timeout=5)
            except grpc.RpcError:
                return True
            return check.status != hpb.HealthCheckResponse.SERVING

        wait_until(refusing_new_calls, what="the pod to drain")
        with pytest.raises(grpc.RpcError):  # no new calls once draining
            stub.ModelInfer(infer_request("slow", x=np.arange(4, dtype=np.float32)), timeout=5)
        caller.join(30)
        assert "error" not in result, result.get("error")
        got = output_array(result["response"], "y")  # type: ignore[arg-type]
        np.testing.assert_array_equal(got, np.arange(4, dtype=np.float32) * 2)
        assert proc.wait(30) == 0


# Measured on a 2-core x86_64 machine, a 0.3 MB ONNX MLP: RSS grew 0.15 MiB over 180 cycles after
# the first 20 (allocator and onnxruntime warm-up). The bound leaves room for noise.
RSS_GROWTH_BOUND = 16 * 2**20


@pytest.mark.slow
def test_memory_comes_back_after_200_load_unload_cycles(model_dir: Path) -> None:
    cmd = [str(MESH), "pod", "--host", "127.0.0.1", "--port", "{port}", "--no-metrics",
           "--capacity", "1Gi", "--runtimes", "onnx"]  # fmt: skip
    path = str(model_dir / "mlp")
    with pod_process(cmd) as (address, proc):
        control = runtime_pb2_grpc.RuntimeStub(grpc.insecure_channel(address))
        v2 = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))
        x = infer_request("mlp", input=np.ones((8, 64), np.float32))

        def cycle() -> None:
            control.LoadModel(rpb.LoadModelRequest(model_id="mlp", path=path))
            v2.ModelInfer(x)
            assert control.UnloadModel(rpb.UnloadModelRequest(model_id="mlp")).was_loaded

        for _ in range(20):
            cycle()
        baseline = rss_of(proc.pid)
        for _ in range(180):
            cycle()
        growth = rss_of(proc.pid) - baseline
        status = control.RuntimeStatus(rpb.RuntimeStatusRequest())
        assert status.used_bytes == 0
        assert growth < RSS_GROWTH_BOUND, f"RSS grew {growth / 2**20:.1f} MiB over 180 cycles"


@pytest.mark.slow
def test_a_second_pod_with_a_live_id_exits_with_one_line(tmp_path: Path) -> None:
    from tests.cluster.etcd_server import EtcdServer

    etcd = EtcdServer(tmp_path / "etcd")
    etcd.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:

        def pod() -> tuple[subprocess.Popen[bytes], str]:
            port = free_port()
            proc = subprocess.Popen(
                [str(MESH), "pod", "--etcd", etcd.url, "--pod-id", "same", "--host", "127.0.0.1",
                 "--port", str(port), "--no-metrics", "--capacity", "256Mi", "--lease-ttl", "2",
                 "--runtimes", "onnx", "--log-level", "ERROR"],
                cwd=ROOT, stderr=subprocess.PIPE,
            )  # fmt: skip
            procs.append(proc)
            return proc, f"127.0.0.1:{port}"

        first, address = pod()
        _wait_ready(address, first)
        second, _ = pod()
        assert second.wait(60) == 2
        lines = second.stderr.read().decode().strip().splitlines()  # type: ignore[union-attr]
        assert lines[-1].startswith("mesh pod: pod id 'same' is held by another live process")
        assert address in lines[-1]
        assert first.poll() is None
        # The live pod's record survived the second's start and exit.
        from mesh.cluster.codec import Keys, decode
        from mesh.cluster.etcd import EtcdConfig, EtcdStore
        from mesh.cluster.records import InstanceRecord

        async def record() -> InstanceRecord | None:
            store = EtcdStore(EtcdConfig.parse(etcd.url))
            try:
                entry = await store.get(Keys("/mesh/").instance("same"))
                return None if entry is None else decode(InstanceRecord, "", entry.value)
            finally:
                await store.aclose()

        import asyncio

        found = asyncio.run(record())
        assert found is not None and found.address == address
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)
        etcd.stop()
