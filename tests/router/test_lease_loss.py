"""etcd stalled past the lease TTL: the pods' records vanish, the data plane must not."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mesh.cluster.records import PlacementState
from mesh.gen import management_pb2 as mpb
from tests.cluster.etcd_server import EtcdServer
from tests.helpers import running_router, wait_until
from tests.router.test_faults import Load, pod_processes


@pytest.fixture
def private_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """An etcd of this test's own: it is stopped with SIGSTOP."""
    server = EtcdServer(tmp_path / "etcd")
    server.start()
    try:
        yield server
    finally:
        server.resume()
        server.stop()


def _loaded(router, model: str) -> list[str]:  # type: ignore[no-untyped-def]
    copies = router.server.mirror.placements.get(model, {})
    return sorted(p for p, r in copies.items() if r.state is PlacementState.LOADED)


@pytest.mark.slow
def test_etcd_stopped_past_the_lease_ttl_fails_no_request(
    private_etcd: EtcdServer, model_dir: Path, tmp_path: Path
) -> None:
    etcd, prefix = private_etcd, "/stall/"
    with (
        pod_processes(etcd, prefix, model_dir, 2, logs=tmp_path) as procs,  # lease TTL 3 s
        running_router(
            etcd=etcd.url, etcd_prefix=prefix, lease_ttl=3, leader_interval=0.3,
            vanished_pod_grace=6,
        ) as router,
    ):  # fmt: skip
        router.management.RegisterModel(
            mpb.RegisterModelRequest(
                model_id="xgb", format="xgboost", storage_path="xgb",
                options=mpb.ModelOptions(min_copies=2),
            )
        )  # fmt: skip
        wait_until(lambda: len(_loaded(router, "xgb")) == 2, what="two copies")
        x = np.ones((1, 64), np.float32)
        with Load(router, {"xgb": {"input__0": x}}) as load:
            wait_until(lambda: load.ok["xgb"] > 20, what="traffic")
            etcd.pause()
            try:
                stopped = time.monotonic()
                # Past the pods' lease TTL (3 s) on etcd's clock too: the leases expire.
                wait_until(lambda: time.monotonic() - stopped > 7, timeout=20, what="the stall")
            finally:
                etcd.resume()
            during = load.ok["xgb"]
            # The pods register again with no manual step, and republish their copies.
            wait_until(lambda: len(_loaded(router, "xgb")) == 2, what="copies back")
            wait_until(lambda: load.ok["xgb"] > during + 50, what="traffic after the stall")
        assert load.failed["xgb"] == []
        assert all(proc.poll() is None for proc, _ in procs.values())
