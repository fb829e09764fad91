"""A draining pod waits for its models to be loaded elsewhere, but only `handoff_timeout`: a
hand-off nobody completes (here no router's leader runs) does not keep the pod from stopping."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from mesh.cluster.codec import Keys, decode, encode
from mesh.cluster.etcd import EtcdConfig, EtcdStore
from mesh.cluster.records import InstanceRecord, ModelRecord
from mesh.cluster.store import EventType
from mesh.gen import runtime_pb2 as rpb
from mesh.pod.artifacts import DirectoryArtifacts
from mesh.storageref import StorageRef
from tests.cluster.conftest import etcd, prefix  # noqa: F401  (shared fixtures)
from tests.cluster.etcd_server import EtcdServer
from tests.helpers import RunningPod, running_pod


@pytest.fixture
def handoff_timeout() -> float:
    """The pods' hand-off timeout: 1 s, for a hand-off that is to run out (a test that wants
    one to complete waits longer: the drain's mirror, the other pod's placement record)."""
    return 1.0


@pytest.fixture
def two_pods(
    etcd: EtcdServer,  # noqa: F811
    prefix: str,  # noqa: F811
    model_dir: Path,
    handoff_timeout: float,
) -> Iterator[tuple[RunningPod, RunningPod]]:
    async def register() -> None:  # as a router would, with no router (and so no leader)
        store = EtcdStore(EtcdConfig.parse(etcd.url))
        record = ModelRecord("mlp", "onnx", storage=StorageRef(path="mlp"))
        await store.put(Keys(prefix).model("mlp"), encode(record))
        await store.aclose()

    asyncio.run(register())
    with ExitStack() as stack:
        going, staying = (
            stack.enter_context(
                running_pod(
                    artifacts=DirectoryArtifacts(model_dir),
                    etcd=etcd.url,
                    etcd_prefix=prefix,
                    pod_id=pod_id,
                    lease_ttl=5,
                    handoff_timeout=handoff_timeout,
                )
            )
            for pod_id in ("going", "staying")
        )
        # Both in the mesh before a test drains one: the registration publishes in a task of its
        # own, and on a loaded machine "going" could otherwise find no other pod at all.
        for pod in (going, staying):
            pod.run(pod.server.registration.wait_registered())
        yield going, staying


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.text = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.text += record.getMessage() + "\n"


@pytest.fixture
def drain_log() -> Iterator[Lines]:
    """The pod server's log lines, caught on its own logger (whatever a test before configured)."""
    logger = logging.getLogger("mesh.pod.server")
    lines, level = Lines(), logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(lines)
    logger.setLevel(level)


def load(pod: RunningPod) -> None:
    pod.control.LoadModel(rpb.LoadModelRequest(model_id="mlp", format="onnx", storage_path="mlp"))


def test_a_hand_off_nobody_completes_ends_at_the_timeout(
    two_pods: tuple[RunningPod, RunningPod], drain_log: Lines
) -> None:
    going, staying = two_pods
    load(going)
    going.run(going.server.aclose(), timeout=30)  # returns: the 1 s hand-off ran out
    assert "1 of 1 models are loaded nowhere else (mlp); leaving" in drain_log.text
    assert staying.plane.cache.loaded_ids() == []  # nobody took it: it really was not handed off


# Long enough that the drain ends on the copy elsewhere, not on the timeout: with 1 s, a loaded
# machine spent it starting the drain's mirror and waiting for "staying" to publish its copy.
@pytest.mark.parametrize("handoff_timeout", [60.0])
def test_a_hand_off_ends_as_soon_as_the_model_is_loaded_elsewhere(
    two_pods: tuple[RunningPod, RunningPod], drain_log: Lines
) -> None:
    going, staying = two_pods
    load(going)
    load(staying)
    going.run(going.server.aclose(), timeout=90)
    assert "drain: 1 of 1 models loaded elsewhere" in drain_log.text
    assert "loaded nowhere else" not in drain_log.text


def test_a_pod_drained_with_no_hand_off_is_seen_draining_before_it_vanishes(
    etcd: EtcdServer,  # noqa: F811
    prefix: str,  # noqa: F811
    model_dir: Path,
) -> None:
    """With no hand-off to wait for, a drain reaches the lease's revocation at once: the
    instance record must say `draining` before it goes, or routers see the pod vanish (and
    count its requests as lost to a dead pod) rather than drain."""
    keys = Keys(prefix)
    with running_pod(
        artifacts=DirectoryArtifacts(model_dir), etcd=etcd.url, etcd_prefix=prefix, pod_id="p"
    ) as pod:
        pod.run(pod.server.registration.wait_registered())
        load(pod)

        async def revision() -> int:
            store = EtcdStore(EtcdConfig.parse(etcd.url))
            try:
                return (await store.range(keys.instance("p"))).revision
            finally:
                await store.aclose()

        since = asyncio.run(revision())
        pod.run(pod.server.aclose(), timeout=30)  # handoff_timeout 0: no hand-off at all

    async def history() -> list[tuple[EventType, bool]]:
        """The instance record's events since, up to its deletion: (kind, draining)."""
        store = EtcdStore(EtcdConfig.parse(etcd.url))
        seen: list[tuple[EventType, bool]] = []
        try:
            async with asyncio.timeout(30):
                async for batch in store.watch(keys.instance("p"), since + 1):
                    for event in batch:
                        if event.type is EventType.DELETE:
                            return [*seen, (event.type, False)]
                        record = decode(InstanceRecord, event.key, event.value)
                        seen.append((event.type, record.draining))
        finally:
            await store.aclose()
        return seen

    events = asyncio.run(history())
    assert events[-1][0] is EventType.DELETE  # the lease went
    assert (EventType.PUT, True) in events[:-1], events  # after the pod was seen draining
