"""Through the router: a model evicted into a pod's host tier is served again with no pull.

The pod that holds it in its host tier takes the miss even when another pod has free room
(where the model would have to be pulled again). The pods' device tiers are FakeDevices, so
that every model measures exactly its size and the evictions are the same on every run (a real
model's RSS delta varies from load to load by 2x; tests/pod/test_host_tier_pod.py runs a real
ONNX model through the host tier).
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest

from mesh.cli import main
from mesh.cluster.records import PlacementState
from mesh.gen import management_pb2 as mpb
from mesh.pod.devices import FakeDevice
from mesh.runtimes.registry import RuntimeRegistry
from tests.cluster.etcd_server import EtcdServer
from tests.fakes import CountingPuller, DeviceRuntime
from tests.helpers import RunningRouter, infer_request, output_array, running_pod, running_router

MB = 1_000_000


def _loaded_on(router: RunningRouter, model_id: str) -> str:
    def where(m):  # type: ignore[no-untyped-def]
        return [
            pod
            for pod, p in m.placements.get(model_id, {}).items()
            if p.state is PlacementState.LOADED
        ]

    router.run(router.server.mirror.wait_for(lambda m: bool(where(m))))
    (pod,) = where(router.server.mirror)
    return str(pod)


def test_a_model_evicted_into_a_host_tier_is_served_again_with_no_pull(
    etcd: EtcdServer, prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "m.fgpu").write_bytes(b"weights" * 100)
    pullers = {f"pod-{i}": CountingPuller(store, tmp_path / f"disk-{i}") for i in range(2)}
    runtimes = {pod_id: DeviceRuntime(FakeDevice(total=100 * MB)) for pod_id in pullers}
    with ExitStack() as stack:
        pods = {
            pod_id: stack.enter_context(
                running_pod(
                    runtimes=RuntimeRegistry([runtimes[pod_id]]),
                    artifacts=puller,
                    device_memory=runtimes[pod_id].device,
                    etcd=etcd.url,
                    etcd_prefix=prefix,
                    pod_id=pod_id,
                    lease_ttl=5,
                    capacity=15 * MB,  # one 10 MB model each
                    host_tier="50M",
                )
            )
            for pod_id, puller in pullers.items()
        }
        router = stack.enter_context(running_router(etcd=etcd.url, etcd_prefix=prefix))
        for i in range(3):
            router.management.RegisterModel(
                mpb.RegisterModelRequest(
                    model_id=f"m{i}",
                    format="fakegpu",
                    storage_path="m.fgpu",
                    options=mpb.ModelOptions(
                        size_estimate=10 * MB, runtime_options={"size": str(10 * MB)}
                    ),
                )
            )
        x = np.arange(4, dtype=np.float32)

        def infer(model_id: str) -> None:
            response = router.v2.ModelInfer(infer_request(model_id, x=x), timeout=60)
            np.testing.assert_array_equal(output_array(response, "y"), x * 2)

        infer("m0")
        first = _loaded_on(router, "m0")
        infer("m1")
        second = _loaded_on(router, "m1")
        assert second != first  # the other pod had the room
        infer("m2")  # both full: one of them demotes its model to its host tier
        demoting = _loaded_on(router, "m2")
        demoted, other, kept = ("m0", second, "m1") if demoting == first else ("m1", first, "m0")
        router.run(
            router.server.mirror.wait_for(
                lambda m: (
                    demoted in m.instances[demoting].host_models and not m.placements.get(demoted)
                )
            )
        )
        assert sum(len(p.pulls) for p in pullers.values()) == 3
        # `mesh status` shows where each model is, per tier: m-demoted in the host tier of the
        # pod that demoted it (10 MB of host memory), the others on the device.
        status = router.management.GetModelStatus(mpb.GetModelStatusRequest(model_id=demoted))
        assert [(h.pod_id, h.host_bytes) for h in status.host_copies] == [(demoting, 10 * MB)]
        assert not status.copies
        r = ("--router", router.address)
        assert main(["status", demoted, *r]) == 0
        out = capsys.readouterr().out
        assert f"{demoting}   host   demoted   9.5Mi" in out
        assert main(["status", "-o", "json", *r]) == 0
        data = json.loads(capsys.readouterr().out)
        by_id = {m["model_id"]: m for m in data["models"]}
        assert by_id[demoted]["host_copies"] == [{"pod_id": demoting, "host_bytes": 10 * MB}]
        assert by_id["m2"]["host_copies"] == [] and by_id["m2"]["copies"][0]["pod_id"] == demoting
        assert main(["status", *r]) == 0
        lines = capsys.readouterr().out.splitlines()
        pod_row = next(line for line in lines if line.startswith(demoting))
        assert "9.5Mi/47.7Mi (1)" in pod_row  # the host tier: used/capacity (models)
        model_row = next(line for line in lines if line.startswith(f"{demoted} "))
        assert model_row.split()[3:5] == ["-", demoting]  # no copy; in that pod's host tier
        # The other pod gets its room back: free room would win a plain miss.
        router.management.UnregisterModel(mpb.UnregisterModelRequest(model_id=kept))
        router.run(
            router.server.mirror.wait_for(
                lambda m: m.instances[other].model_count == 0 and m.instances[other].used == 0
            )
        )

        # Another router, which never loaded anything (the first one forwards to a pod where
        # it loaded a model for a few seconds after, and the pod would promote on the request).
        fresh = stack.enter_context(running_router(etcd=etcd.url, etcd_prefix=prefix))
        fresh.run(
            fresh.server.mirror.wait_for(
                lambda m: (
                    demoted in m.instances[demoting].host_models and m.instances[other].used == 0
                )
            )
        )
        response = fresh.v2.ModelInfer(infer_request(demoted, x=x), timeout=60)  # a miss
        np.testing.assert_array_equal(output_array(response, "y"), x * 2)
        # Served again from the host tier of the pod that demoted it, not pulled onto the other.
        assert _loaded_on(fresh, demoted) == demoting
        assert sum(len(p.pulls) for p in pullers.values()) == 3
        assert runtimes[demoting].restored == [demoted]
        promotions = [
            line
            for line in pods[demoting].metrics_text().splitlines()
            if line.startswith("mesh_pod_promotions_total ")
        ]
        assert promotions == ["mesh_pod_promotions_total 1.0"]
