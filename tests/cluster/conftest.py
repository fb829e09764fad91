from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator

import pytest

from mesh.cluster.etcd import EtcdConfig, EtcdStore
from mesh.cluster.memory import MemoryStore
from mesh.cluster.store import KeyValueStore
from tests.cluster.etcd_server import EtcdServer

_prefixes = itertools.count()


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One real etcd for the session; tests keep apart by key prefix."""
    server = EtcdServer(tmp_path_factory.mktemp("etcd") / "data")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return f"/test-{next(_prefixes)}-{request.node.name[:40]}/"


@pytest.fixture(params=["memory", "etcd"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[KeyValueStore]:
    """Each contract test runs on both backends."""
    backend: KeyValueStore
    if request.param == "memory":
        backend = MemoryStore()
    else:
        server: EtcdServer = request.getfixturevalue("etcd")
        backend = EtcdStore(EtcdConfig.parse(server.url))
    yield backend
    await backend.aclose()
