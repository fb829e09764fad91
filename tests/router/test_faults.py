"""The mesh under faults: a pod killed under load, and etcd gone for 30 seconds."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest

from mesh.gen import management_pb2 as mpb
from mesh.gen import runtime_pb2 as rpb
from mesh.gen import runtime_pb2_grpc
from tests.cluster.etcd_server import EtcdServer
from tests.helpers import (
    RunningPod,
    RunningRouter,
    free_port,
    infer_request,
    running_router,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def pod_processes(
    etcd: EtcdServer,
    prefix: str,
    storage: Path,
    n: int,
    logs: Path | None = None,
    extra: tuple[str, ...] = (),
) -> Iterator[dict[str, tuple[subprocess.Popen[bytes], str]]]:
    """`n` pods as processes: `proc-0`... to (process, address); stderr to logs/proc-i.log."""
    procs: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    try:
        for i in range(n):
            port = free_port()
            stderr = (logs / f"proc-{i}.log").open("wb") if logs else subprocess.DEVNULL
            proc = subprocess.Popen(
                [sys.executable, "-m", "mesh", "pod", "--etcd", etcd.url, "--etcd-prefix", prefix,
                 "--pod-id", f"proc-{i}", "--host", "127.0.0.1", "--port", str(port),
                 "--no-metrics", "--capacity", "1Gi", "--lease-ttl", "3",
                 "--storage-dir", str(storage), "--runtimes", "onnx,xgboost", *extra],
                cwd=ROOT, stderr=stderr,
            )  # fmt: skip
            if not isinstance(stderr, int):
                stderr.close()  # the child has its own copy
            procs[f"proc-{i}"] = (proc, f"127.0.0.1:{port}")
        for proc, address in procs.values():
            stub = runtime_pb2_grpc.RuntimeStub(grpc.insecure_channel(address))
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, "pod exited"
                try:
                    stub.RuntimeStatus(rpb.RuntimeStatusRequest(), timeout=1)
                    break
                except grpc.RpcError:
                    assert time.monotonic() < deadline, "pod did not start"
                    time.sleep(0.2)
        yield procs
    finally:
        for proc, _ in procs.values():
            proc.kill()
            proc.wait(10)


class Load:
    """Client threads sending requests for some models until stopped; outcomes by model."""

    def __init__(self, router: RunningRouter, models: dict[str, dict[str, np.ndarray]]) -> None:
        self.router = router
        self.models = models
        self.ok: Counter[str] = Counter()
        self.failed: dict[str, list[str]] = {m: [] for m in models}
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(m,), daemon=True)
            for m in models
            for _ in range(2)
        ]

    def _loop(self, model: str) -> None:
        request = infer_request(model, **self.models[model])
        while not self._stop.is_set():
            try:
                self.router.v2.ModelInfer(request, timeout=20)
                self.ok[model] += 1
            except grpc.RpcError as exc:
                self.failed[model].append(f"{exc.code().name}: {exc.details()}")
            time.sleep(0.01)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


@pytest.mark.slow
def test_a_pod_killed_under_load(etcd: EtcdServer, prefix: str, model_dir: Path) -> None:
    with (
        pod_processes(etcd, prefix, model_dir, 2) as procs,
        running_router(etcd=etcd.url, etcd_prefix=prefix, leader_interval=0.3) as router,
    ):
        register = router.management.RegisterModel
        register(mpb.RegisterModelRequest(model_id="both", format="onnx", storage_path="mlp",
                                          options=mpb.ModelOptions(min_copies=2)))  # fmt: skip
        register(mpb.RegisterModelRequest(model_id="single", format="xgboost",
                                          storage_path="xgb", load_now=True))  # fmt: skip

        def copies(model: str) -> list[str]:
            status = router.management.GetModelStatus(mpb.GetModelStatusRequest(model_id=model))
            return sorted(c.pod_id for c in status.copies if c.state == "loaded")

        deadline = time.monotonic() + 30
        while (len(copies("both")) < 2 or not copies("single")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(copies("both")) == 2
        (victim,) = copies("single")
        x = np.ones((1, 64), np.float32)
        with Load(router, {"both": {"input": x}, "single": {"input__0": x}}) as load:
            time.sleep(1)
            procs[victim][0].kill()  # SIGKILL: no drain, no lease revoked
            killed_at = load.ok["single"]
            survivor = next(p for p in procs if p != victim)
            # The victim's lease (3 s) runs out, its copy goes, the model loads on the survivor
            # and requests keep being answered there.
            wait_until(lambda: copies("single") == [survivor], what="single on the survivor")
            both_at = load.ok["both"]
            wait_until(lambda: load.ok["single"] > killed_at and load.ok["both"] > both_at)
        assert load.failed["both"] == []  # another copy answered every time
        assert load.failed["single"] == []  # loaded elsewhere within the deadline
        assert copies("single") == [survivor]


@pytest.mark.slow
def test_etcd_gone_for_30_seconds_under_load(
    etcd: EtcdServer, prefix: str, pods: list[RunningPod]
) -> None:
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        for model in ("hot", "cold", "later"):
            router.management.RegisterModel(
                mpb.RegisterModelRequest(model_id=model, format="onnx", storage_path="mlp")
            )
        x = {"input": np.ones((1, 64), np.float32)}
        router.v2.ModelInfer(infer_request("hot", **x))  # loaded before etcd goes
        router.run(router.server.mirror.wait_for(lambda m: "hot" in m.placements))
        with Load(router, {"hot": x}) as load:
            etcd.stop()
            try:
                hot_at_stop = load.ok["hot"]
                started = time.monotonic()  # the outage lasts 30 s: a scenario, not a check
                failures = []
                while time.monotonic() - started < 30:
                    with pytest.raises(grpc.RpcError) as err:
                        router.v2.ModelInfer(infer_request("cold", **x), timeout=20)
                    failures.append(err.value.code())
                    time.sleep(2)  # pacing the cold requests across the outage
                hot_during = load.ok["hot"] - hot_at_stop
            finally:
                etcd.start()
            # UNAVAILABLE, never DEADLINE_EXCEEDED: answered before the 20 s deadline, no hang.
            assert set(failures) == {grpc.StatusCode.UNAVAILABLE}

            def later_answers() -> bool:  # recovers with no manual step
                try:
                    router.v2.ModelInfer(infer_request("later", **x), timeout=10)
                    return True
                except grpc.RpcError:
                    return False

            wait_until(later_answers, what="the mesh to recover")
            router.v2.ModelInfer(infer_request("cold", **x), timeout=20)
        assert load.failed["hot"] == []  # every hit succeeded while etcd was away...
        assert hot_during > 0  # ...and hits kept being answered during the outage


def test_a_vmodel_switch_under_load_fails_no_request(
    etcd: EtcdServer, prefix: str, pods: list[RunningPod]
) -> None:
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        for model, path in (("fraud-a", "xgb"), ("fraud-b", "xgb-json")):
            router.management.RegisterModel(
                mpb.RegisterModelRequest(model_id=model, format="xgboost", storage_path=path)
            )
        router.management.SetVModel(
            mpb.SetVModelRequest(vmodel_id="fraud", target_model_id="fraud-a", wait=True)
        )
        with Load(router, {"fraud": {"input__0": np.ones((1, 64), np.float32)}}) as load:
            wait_until(lambda: load.ok["fraud"] > 0, what="requests before the switch")
            status = router.management.SetVModel(
                mpb.SetVModelRequest(vmodel_id="fraud", target_model_id="fraud-b")
            )
            assert status.active_model_id == "fraud-a"  # not switched before fraud-b loads

            def switched() -> mpb.VModelStatusResponse | None:
                status = router.management.GetVModelStatus(
                    mpb.GetVModelStatusRequest(vmodel_id="fraud")
                )
                return status if status.transition == "UP_TO_DATE" else None

            status = wait_until(switched, timeout=20, what="fraud-b to take over")
            assert status.active_model_id == "fraud-b"
            after_switch = load.ok["fraud"]
            wait_until(lambda: load.ok["fraud"] > after_switch, what="requests after the switch")
        assert load.failed["fraud"] == []
        response = router.v2.ModelInfer(
            infer_request("fraud", input__0=np.ones((1, 64), np.float32))
        )
        assert response.model_name == "fraud-b"


@pytest.mark.slow
def test_a_registration_the_routers_view_never_shows_is_unavailable_and_says_what_it_waited_for(
    etcd: EtcdServer, prefix: str
) -> None:
    """RegisterModel writes the record, then waits for the router's mirror to show it: a watch
    that is behind is a dependency down (UNAVAILABLE, retry), not an internal error."""
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        register = router.management.RegisterModel
        register(mpb.RegisterModelRequest(model_id="seen", format="onnx", storage_path="mlp"))
        router.run(router.server.mirror.aclose())  # its watch stops: the view falls behind
        with pytest.raises(grpc.RpcError) as err:
            register(mpb.RegisterModelRequest(model_id="unseen", format="onnx", storage_path="mlp"))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
        assert "model 'unseen' registered" in err.value.details()
        assert "etcd or its watch is behind" in err.value.details()
