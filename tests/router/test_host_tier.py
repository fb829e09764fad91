"""Through the router: a model evicted into a pod's host tier is served again with no pull.

The pod that holds it in its host tier takes the miss even when another pod has free room
(where the model would have to be pulled again).
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from mesh import examples
from mesh.cluster.records import PlacementState
from mesh.gen import management_pb2 as mpb
from tests.cluster.etcd_server import EtcdServer
from tests.fakes import CountingPuller
from tests.helpers import RunningRouter, infer_request, output_array, running_pod, running_router

MB = 1_000_000


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store")
    examples.onnx_mlp(root / "big", sizes=(64, 2048, 2048, 10))  # 17 MB on disk
    return root


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
    etcd: EtcdServer, prefix: str, store: Path, tmp_path: Path
) -> None:
    pullers = {f"pod-{i}": CountingPuller(store, tmp_path / f"disk-{i}") for i in range(2)}
    with ExitStack() as stack:
        pods = {
            pod_id: stack.enter_context(
                running_pod(
                    artifacts=puller,
                    etcd=etcd.url,
                    etcd_prefix=prefix,
                    pod_id=pod_id,
                    lease_ttl=5,
                    capacity=45 * MB,  # one copy of the 17 MB MLP each (it measures 21-39 MB)
                    host_tier="64Mi",
                )
            )
            for pod_id, puller in pullers.items()
        }
        router = stack.enter_context(running_router(etcd=etcd.url, etcd_prefix=prefix))
        for i in range(3):
            router.management.RegisterModel(
                mpb.RegisterModelRequest(
                    model_id=f"m{i}",
                    format="onnx",
                    storage_path="big",
                    options=mpb.ModelOptions(size_estimate=30 * MB),
                )
            )
        x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
        want = ort.InferenceSession(str(store / "big" / "model.onnx")).run(None, {"input": x})[0]

        def infer(model_id: str) -> None:
            response = router.v2.ModelInfer(infer_request(model_id, input=x), timeout=60)
            np.testing.assert_array_equal(output_array(response, "output"), want)

        infer("m0")
        first = _loaded_on(router, "m0")
        infer("m1")
        second = _loaded_on(router, "m1")
        assert second != first  # the other pod had the room
        infer("m2")  # both full: one of them demotes its model to its host tier
        demoting = _loaded_on(router, "m2")
        demoted, other, kept = ("m0", second, "m1") if demoting == first else ("m1", first, "m0")
        router.run(
            router.server.mirror.wait_for(lambda m: demoted in m.instances[demoting].host_models)
        )
        assert sum(len(p.pulls) for p in pullers.values()) == 3
        # The other pod gets its room back: free room would win a plain miss.
        router.management.UnregisterModel(mpb.UnregisterModelRequest(model_id=kept))
        router.run(
            router.server.mirror.wait_for(
                lambda m: m.instances[other].model_count == 0 and m.instances[other].used == 0
            )
        )

        infer(demoted)  # a miss: served again from the host tier of the pod that demoted it
        assert _loaded_on(router, demoted) == demoting
        assert sum(len(p.pulls) for p in pullers.values()) == 3
        promotions = [
            line
            for line in pods[demoting].metrics_text().splitlines()
            if line.startswith("mesh_pod_promotions_total ")
        ]
        assert promotions == ["mesh_pod_promotions_total 1.0"]
