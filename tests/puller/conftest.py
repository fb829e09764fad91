from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from mesh.gen import puller_pb2 as ppb
from mesh.puller.client import PullerClient
from mesh.puller.core import Puller
from mesh.puller.server import PullerServer, build_puller
from mesh.puller.settings import PullerSettings
from tests.puller.servers import FaultServer, MotoServer

_names = itertools.count()


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One moto S3 server for the session; tests keep apart by bucket."""
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def bucket(moto: MotoServer, request: pytest.FixtureRequest) -> str:
    name = f"test-{next(_names)}-{request.node.name[:20]}".lower().replace("_", "-")
    moto.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def http_server() -> Iterator[FaultServer]:
    server = FaultServer().start()
    yield server
    server.stop()


def settings(tmp_path: Path, storage: dict[str, Any] | Path, **overrides: Any) -> PullerSettings:
    """Settings for a test: small ranges and fast retries. `storage` is written to a file."""
    if isinstance(storage, dict):
        config = tmp_path / f"storage-{next(_names)}.json"
        config.write_text(json.dumps(storage))
    else:
        config = storage
    values: dict[str, Any] = {
        "cache_dir": tmp_path / "cache",
        "cache_bytes": 1 << 30,
        "storage_config": config,
        "pvc_root": tmp_path / "pvc",
        "range_size": 256 << 10,
        "retries": 3,
        "retry_initial": 0.01,
        "retry_max": 0.05,
        "metrics_port": None,
        "listen": "0",
    }
    values.update(overrides)
    return PullerSettings(**values)


class Rig:
    """A Puller core (no gRPC) and its metrics registry."""

    def __init__(self, s: PullerSettings) -> None:
        self.settings = s
        self.registry = CollectorRegistry()
        self.puller: Puller = build_puller(s, self.registry)
        self.puller.cache.recover()

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    async def aclose(self) -> None:
        await self.puller.aclose()


@pytest.fixture
async def make_rig(tmp_path: Path) -> AsyncIterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def make(storage: dict[str, Any] | Path, **overrides: Any) -> Rig:
        rig = Rig(settings(tmp_path, storage, **overrides))
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        await rig.aclose()


class Served:
    """A PullerServer on a unix socket with a client, for end-to-end tests."""

    def __init__(self, server: PullerServer, client: PullerClient) -> None:
        self.server = server
        self.client = client

    def metric(self, name: str, **labels: str) -> float:
        return self.server.registry.get_sample_value(name, labels) or 0.0

    async def legacy_fetch(
        self, model_id: str, key: str, path: str, options: dict[str, str] | None = None
    ) -> Any:
        """Pull as a pod from before StorageRef asks: storage_key, path and options by name,
        no `storage` message. Its PullResponse; a failure as the client raises it."""
        request = ppb.PullRequest(
            model_id=model_id, storage_key=key, path=path, options=options or {}
        )
        return await self.client._invoke("Pull", request, ppb.PullResponse)


@pytest.fixture
async def serve_puller(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start a PullerServer on a unix socket (short path: sun_path holds 107 bytes)."""
    started: list[Served] = []
    sockets = Path(tempfile.mkdtemp(prefix="mesh-puller-", dir="/tmp"))

    async def start(storage: dict[str, Any] | Path, **overrides: Any) -> Served:
        overrides.setdefault("listen", f"unix:{sockets}/p{len(started)}.sock")
        server = PullerServer(settings(tmp_path, storage, **overrides))
        await server.start()
        served = Served(server, PullerClient(server.address, timeout=60))
        started.append(served)
        return served

    yield start
    for served in started:
        await served.client.aclose()
        await served.server.aclose()
    shutil.rmtree(sockets, ignore_errors=True)


def every_log_line(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured record as a handler would write it, tracebacks and causes included."""
    formatter = logging.Formatter("%(levelname)s %(name)s %(message)s")
    return "\n".join(formatter.format(r) for r in caplog.records)


def tree_bytes(root: Path) -> int:
    """Apparent size of the artifacts' files under root: what the budget counts (the cache's
    own bookkeeping, meta.json and holds.json, is not). Files deleted meanwhile count 0."""
    own = {"meta.json", "holds.json", "holds.tmp"}
    total = 0
    for directory, _, names in os.walk(root):
        for name in names:
            if name in own:
                continue
            try:
                st = os.lstat(os.path.join(directory, name))
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


async def gather(*coros: Any) -> list[Any]:
    return list(await asyncio.gather(*coros, return_exceptions=True))
