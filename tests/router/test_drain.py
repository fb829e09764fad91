"""A pod told to stop (SIGTERM, as Kubernetes does) hands its models to other pods first."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from mesh.gen import health_pb2 as hpb
from mesh.gen import health_pb2_grpc, runtime_pb2_grpc
from mesh.gen import management_pb2 as mpb
from mesh.gen import runtime_pb2 as rpb
from tests.cluster.etcd_server import EtcdServer
from tests.helpers import infer_request, running_router, wait_until
from tests.router.test_faults import Load, pod_processes

MODELS = {"m-old": "mlp", "m-mid": "mlp", "m-hot": "mlp"}  # in order of last use


@pytest.mark.slow
def test_sigterm_hands_the_models_to_another_pod_then_exits(
    etcd: EtcdServer, prefix: str, model_dir: Path, tmp_path: Path
) -> None:
    with (
        pod_processes(etcd, prefix, model_dir, 2, logs=tmp_path,
                      extra=("--handoff-timeout", "60")) as procs,
        running_router(etcd=etcd.url, etcd_prefix=prefix, leader_interval=0.3) as router,
    ):  # fmt: skip
        (going, going_address), (_, staying_address) = procs["proc-0"], procs["proc-1"]
        staying_runtime = runtime_pb2_grpc.RuntimeStub(grpc.insecure_channel(staying_address))
        runtime = runtime_pb2_grpc.RuntimeStub(grpc.insecure_channel(going_address))
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(going_address))
        assert health.Check(hpb.HealthCheckRequest()).status == hpb.HealthCheckResponse.SERVING
        for model, path in MODELS.items():
            router.management.RegisterModel(
                mpb.RegisterModelRequest(model_id=model, format="onnx", storage_path=path)
            )
            runtime.LoadModel(rpb.LoadModelRequest(model_id=model, format="onnx",
                                                   storage_path=path))  # fmt: skip

        def holders(model: str) -> list[str]:
            status = router.management.GetModelStatus(mpb.GetModelStatusRequest(model_id=model))
            return sorted(c.pod_id for c in status.copies if c.state == "loaded")

        wait_until(lambda: all(holders(m) == ["proc-0"] for m in MODELS), timeout=20)
        x = {"input": np.ones((1, 64), np.float32)}
        for model in MODELS:  # through the router, to proc-0, the only holder
            router.v2.ModelInfer(infer_request(model, **x))
            time.sleep(0.05)  # pacing: distinct last-use times, so the LRU order is the dict's
        assert not staying_runtime.RuntimeStatus(rpb.RuntimeStatusRequest()).models

        busy = ["m-mid", "m-hot"]  # m-old sees no request: only the hand-off moves it
        with Load(router, dict.fromkeys(busy, x)) as load:
            wait_until(lambda: all(load.ok[m] > 0 for m in busy), what="requests before SIGTERM")
            going.send_signal(signal.SIGTERM)
            # Readiness fails at once, while the pod still serves and hands off.
            wait_until(
                lambda: (
                    health.Check(hpb.HealthCheckRequest()).status != hpb.HealthCheckResponse.SERVING
                ),
                timeout=5,
                what="readiness to turn false",
            )
            assert going.poll() is None
            try:
                going.wait(60)  # it leaves once the models are elsewhere, not at its 60 s timeout
            except subprocess.TimeoutExpired:
                going.send_signal(signal.SIGUSR1)  # its threads' stacks, into its log
                time.sleep(1)
                pytest.fail("the pod did not exit:\n" + (tmp_path / "proc-0.log").read_text())
            after = {m: load.ok[m] for m in busy}  # and requests go on once it has gone
            wait_until(lambda: all(load.ok[m] > after[m] for m in busy), what="requests after")
        assert going.returncode == 0
        assert {m: load.failed[m] for m in busy} == {m: [] for m in busy}
        assert all(load.ok[m] > 0 for m in busy)
        held = {
            m.model_id for m in staying_runtime.RuntimeStatus(rpb.RuntimeStatusRequest()).models
        }
        assert held == set(MODELS)
        log = (tmp_path / "proc-0.log").read_text()
        assert "drain: 3 of 3 models loaded elsewhere" in log
