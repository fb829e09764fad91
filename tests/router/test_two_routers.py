"""Churn through two routers when the models do not all fit (the issue's finding 6 at test
scale): two small pods, more models than they hold, Zipf(1.0) requests spread over both
routers, and not one failed request while the pods evict idle models to make room."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import numpy as np
import pytest

from mesh.gen import management_pb2 as mpb
from mesh.pod.artifacts import DirectoryArtifacts
from tests.cluster.etcd_server import EtcdServer
from tests.helpers import RunningPod, infer_request, running_pod, running_router, wait_until

MODELS = [f"z{i:03d}" for i in range(48)]
CAPACITY = 3 * 2**19  # per pod, 1.5 MiB: a dozen of the 0.1-0.2 MiB models, not all 48 in two


@pytest.fixture
def small_pods(etcd: EtcdServer, prefix: str, model_dir: Path) -> Iterator[list[RunningPod]]:
    with ExitStack() as stack:
        yield [
            stack.enter_context(
                running_pod(
                    artifacts=DirectoryArtifacts(model_dir), etcd=etcd.url, etcd_prefix=prefix,
                    pod_id=f"tiny-{i}", lease_ttl=5, capacity=CAPACITY, runtimes=None,
                )
            )
            for i in range(2)
        ]  # fmt: skip


def test_zipf_churn_over_two_routers_fails_no_request_when_the_models_do_not_fit(
    etcd: EtcdServer, prefix: str, small_pods: list[RunningPod]
) -> None:
    with (
        running_router(etcd=etcd.url, etcd_prefix=prefix) as first,
        running_router(etcd=etcd.url, etcd_prefix=prefix) as second,
    ):
        for model in MODELS:
            first.management.RegisterModel(
                mpb.RegisterModelRequest(model_id=model, format="xgboost", storage_path="xgb")
            )
        wait_until(lambda: len(second.server.mirror.models) == len(MODELS), what="the models")
        x = np.ones((1, 64), np.float32)
        failed: list[str] = []
        served: set[str] = set()
        rng = np.random.default_rng(1)
        weights = 1 / np.arange(1, len(MODELS) + 1)  # Zipf(1.0)
        picks = rng.choice(len(MODELS), size=600, p=weights / weights.sum())
        routers = itertools.cycle([first, second])

        def client(part: np.ndarray, router: object) -> None:
            for i in part:
                try:
                    router.v2.ModelInfer(  # type: ignore[attr-defined]
                        infer_request(MODELS[i], input__0=x), timeout=30
                    )
                    served.add(MODELS[i])
                except grpc.RpcError as exc:
                    failed.append(f"{MODELS[i]}: {exc.code().name}: {exc.details()}")

        threads = [
            threading.Thread(target=client, args=(p, next(routers)))
            for p in np.array_split(picks, 8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert failed == [], failed[:5]
        assert served == {MODELS[i] for i in picks}
        # The models did not all fit: the routers had to load models again after the pods
        # made room for others (one load per model would have sufficed otherwise).
        loads = sum(r.server.router.loads_started for r in (first, second))
        assert loads > len(served)
