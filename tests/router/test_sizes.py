"""Sizes that stick: what a copy measured is written to the registration, outlives the copy,
and estimates the models of its format that were never loaded."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import numpy as np
import pytest

from mesh.gen import management_pb2 as mpb
from mesh.gen import runtime_pb2 as rpb
from mesh.pod.artifacts import DirectoryArtifacts
from tests.cluster.etcd_server import EtcdServer
from tests.helpers import RunningPod, infer_request, running_pod, running_router, wait_until

MODELS = [f"x{i:03d}" for i in range(12)]


@pytest.fixture
def small_pods(etcd: EtcdServer, prefix: str, model_dir: Path) -> Iterator[list[RunningPod]]:
    """Two pods of 64 MiB each: smaller than the 256 MiB a model of unknown size is guessed."""
    with ExitStack() as stack:
        yield [
            stack.enter_context(
                running_pod(
                    artifacts=DirectoryArtifacts(model_dir), etcd=etcd.url, etcd_prefix=prefix,
                    pod_id=f"small-{i}", lease_ttl=5, capacity=64 * 2**20, runtimes=None,
                )
            )
            for i in range(2)
        ]  # fmt: skip


def test_models_of_unknown_size_load_on_small_pods_and_keep_their_size(
    etcd: EtcdServer, prefix: str, small_pods: list[RunningPod]
) -> None:
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        for model in MODELS:
            router.management.RegisterModel(
                mpb.RegisterModelRequest(model_id=model, format="xgboost", storage_path="xgb")
            )
        x = np.ones((1, 64), np.float32)
        failed: list[str] = []
        rng = np.random.default_rng(0)
        weights = 1 / np.arange(1, len(MODELS) + 1)  # Zipf(1)
        picks = rng.choice(len(MODELS), size=120, p=weights / weights.sum())

        def client(part: np.ndarray) -> None:
            for i in part:
                try:
                    router.v2.ModelInfer(infer_request(MODELS[i], input__0=x), timeout=30)
                except grpc.RpcError as exc:
                    failed.append(f"{exc.code().name}: {exc.details()}")

        threads = [threading.Thread(target=client, args=(p,)) for p in np.array_split(picks, 4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert failed == []
        mirror = router.server.mirror
        used = sorted({MODELS[i] for i in picks})
        wait_until(lambda: all(mirror.models[m].measured_size > 0 for m in used), what="sizes")
        # Evicted (here: unloaded everywhere), the model keeps its measured size...
        model = used[0]
        size = mirror.models[model].measured_size
        # ... recorded for its runtime and the kind of device it was measured on (these pods
        # measure the host's memory) ...
        assert mirror.models[model].measured_sizes == {"xgboost/host": size}
        for pod in small_pods:
            pod.control.UnloadModel(rpb.UnloadModelRequest(model_id=model))
        wait_until(lambda: model not in mirror.placements, what="the copies gone")
        assert mirror.models[model].measured_size == size
        assert mirror.models[model].measured_sizes == {"xgboost/host": size}
        # ... and re-registering the same files keeps it too.
        router.management.RegisterModel(
            mpb.RegisterModelRequest(model_id=model, format="xgboost", storage_path="xgb")
        )
        assert mirror.models[model].measured_size == size
        assert mirror.models[model].measured_sizes == {"xgboost/host": size}
        router.v2.ModelInfer(infer_request(model, input__0=x), timeout=30)


def _disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


def test_a_model_re_registered_with_new_files_is_estimated_from_its_files_times_the_mesh_factor(
    etcd: EtcdServer, prefix: str, model_dir: Path, small_pods: list[RunningPod]
) -> None:
    x = np.ones((1, 64), np.float32)
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        mirror = router.server.mirror
        router.management.RegisterModel(
            mpb.RegisterModelRequest(model_id="a", format="xgboost", storage_path="xgb")
        )
        router.v2.ModelInfer(infer_request("a", input__0=x), timeout=30)
        # The pod that loaded it told the router its files' size, which the registration keeps...
        wait_until(lambda: mirror.models["a"].measured_size > 0, what="the measured size")
        assert mirror.models["a"].artifact_bytes == _disk_bytes(model_dir / "xgb")
        # ... and publishes what it learned from the load: bytes in memory per byte on disk.
        wait_until(
            lambda: any(i.size_factors.get("xgboost", 0) > 0 for i in mirror.instances.values()),
            what="a pod's xgboost factor",
        )
        for pod in small_pods:
            pod.control.UnloadModel(rpb.UnloadModelRequest(model_id="a"))
        wait_until(lambda: "a" not in mirror.placements, what="the copy gone")
        # New files, of another size, with their size given by the operator: what the old
        # files measured no longer holds.
        new_files = _disk_bytes(model_dir / "xgb-json")
        assert new_files != mirror.models["a"].artifact_bytes
        router.management.RegisterModel(
            mpb.RegisterModelRequest(
                model_id="a", format="xgboost", storage_path="xgb-json",
                options=mpb.ModelOptions(artifact_bytes=new_files),
            )
        )  # fmt: skip
        record = mirror.models["a"]
        assert (record.measured_size, dict(record.measured_sizes)) == (0, {})
        assert record.artifact_bytes == new_files
        factors = sorted(
            f for i in mirror.instances.values() if (f := i.size_factors.get("xgboost", 0)) > 0
        )
        expected = int(new_files * factors[len(factors) // 2])
        snapshot = router.server.router.loader._placement_view("a", record)
        requirements = snapshot.requirements("a")
        assert requirements is not None and requirements.size == expected
        # The estimate places the model, which loads and serves from its new files.
        router.v2.ModelInfer(infer_request("a", input__0=x), timeout=30)
        wait_until(lambda: mirror.models["a"].measured_size > 0, what="the new measured size")
        assert mirror.models["a"].artifact_bytes == new_files


def test_a_negative_artifact_size_is_refused(etcd: EtcdServer, prefix: str) -> None:
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        with pytest.raises(grpc.RpcError) as caught:
            router.management.RegisterModel(
                mpb.RegisterModelRequest(
                    model_id="a", format="xgboost", storage_path="xgb",
                    options=mpb.ModelOptions(artifact_bytes=-1),
                )
            )  # fmt: skip
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
