"""A pod's holds on its puller's artifacts, with the real puller (mesh.pod.dataplane): a
LoadModel cancelled while its pull is under way leaves the artifact evictable, and LoadModels
of one model at once share one pull."""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from mesh.gen import runtime_pb2 as rpb
from mesh.puller.client import PullerClient
from mesh.puller.server import PullerServer
from mesh.runtimes.registry import RuntimeRegistry
from mesh.storageref import StorageRef
from mesh.storagewire import to_message
from tests.fakes import FakeRuntime
from tests.helpers import RunningPod, running_pod, wait_until
from tests.puller.conftest import settings
from tests.puller.servers import FaultServer


class Gate:
    """Holds the storage's answers to GETs until opened; `asked` is set at the first."""

    def __init__(self, server: FaultServer) -> None:
        self.asked = threading.Event()
        self.open = threading.Event()
        server.state.before_get = self._wait

    def _wait(self, path: str) -> None:
        self.asked.set()
        assert self.open.wait(30), "the test never opened the gate"


@contextmanager
def _pod_with_puller(
    tmp_path: Path, storage: FaultServer
) -> Iterator[tuple[RunningPod, PullerServer, PullerClient]]:
    """A pod whose artifacts come from a real puller (on the pod's loop), which downloads from
    `storage` as storage key "web"; and a client of that puller for the test."""
    sockets = Path(tempfile.mkdtemp(prefix="mesh-holds-", dir="/tmp"))
    address = f"unix:{sockets}/puller.sock"
    config = {"web": {"type": "http", "url": f"{storage.url}/models"}}
    puller = PullerServer(settings(tmp_path, config, listen=address))
    pods_client, tests_client = PullerClient(address, timeout=60), PullerClient(address)
    try:
        with running_pod(runtimes=RuntimeRegistry([FakeRuntime()]), artifacts=pods_client) as pod:
            pod.run(puller.start())
            try:
                yield pod, puller, tests_client
            finally:
                pod.run(tests_client.aclose())
                pod.run(pods_client.aclose())
                pod.run(puller.aclose())
    finally:
        shutil.rmtree(sockets, ignore_errors=True)


def _load(model_id: str) -> rpb.LoadModelRequest:
    storage = to_message(StorageRef("web", f"{model_id}.fake"))
    return rpb.LoadModelRequest(model_id=model_id, storage=storage)


def _holders(pod: RunningPod, puller: PullerClient) -> dict[str, tuple[str, ...]]:
    """Per artifact in the puller's cache (by its file's name), the models holding it."""
    view = pod.run(puller.status())
    return {a.source.rpartition("/")[2]: a.models for a in view.artifacts}


def _pulls_answered(puller: PullerServer) -> float:
    registry = puller.registry
    return sum(
        registry.get_sample_value(f"mesh_puller_{name}_total") or 0.0
        for name in ("cache_hits", "cache_misses", "joined_pulls")
    )


def _loads_on_the_pull(pod: RunningPod, model_id: str) -> int:
    """The LoadModels of `model_id` waiting on its pull (the pull itself not counted)."""
    pull = pod.plane._pulls.get(model_id)
    return 0 if pull is None else pull.users - (not pull.task.done())


def _settled(pod: RunningPod) -> bool:
    """No pull under way or used, no release on its way to the puller."""
    return not pod.plane._pulls and not pod.plane._releases


@pytest.fixture
def storage() -> Iterator[FaultServer]:
    server = FaultServer().start()
    server.put("models/m.fake", b"\0" * 1000)
    yield server
    server.stop()


def test_a_load_cancelled_during_its_pull_leaves_the_artifact_evictable(
    tmp_path: Path, storage: FaultServer
) -> None:
    gate = Gate(storage)
    with _pod_with_puller(tmp_path, storage) as (pod, _, puller):
        call = pod.control.LoadModel.future(_load("m"), timeout=60)
        assert gate.asked.wait(30)
        call.cancel()  # the router gave up (its deadline, its client gone) mid-pull
        with pytest.raises(grpc.FutureCancelledError):
            call.result()
        gate.open.set()
        # The download ends in the cache (mesh.puller.core), and nothing holds it.
        wait_until(lambda: _settled(pod), what="the pull over and its hold given back")
        assert _holders(pod, puller) == {"m.fake": ()}
        assert list(pod.control.RuntimeStatus(rpb.RuntimeStatusRequest()).models) == []


def test_loads_of_one_model_at_once_share_one_pull_and_one_that_gives_up_keeps_no_hold(
    tmp_path: Path, storage: FaultServer
) -> None:
    gate = Gate(storage)
    with _pod_with_puller(tmp_path, storage) as (pod, served, puller):
        first = pod.control.LoadModel.future(_load("m"), timeout=60)
        assert gate.asked.wait(30)
        second = pod.control.LoadModel.future(_load("m"), timeout=60)
        wait_until(lambda: _loads_on_the_pull(pod, "m") == 2, what="both loads on one pull")
        first.cancel()
        wait_until(lambda: _loads_on_the_pull(pod, "m") == 1, what="the first load gone")
        gate.open.set()
        assert second.result(30).model_id == "m"
        wait_until(lambda: _settled(pod), what="the pull done with")
        assert _pulls_answered(served) == 1  # one pull for both
        assert _holders(pod, puller) == {"m.fake": ("m",)}  # held by the loaded copy
        pod.control.UnloadModel(rpb.UnloadModelRequest(model_id="m"))
        wait_until(lambda: _holders(pod, puller) == {"m.fake": ()}, what="the unload's release")


def test_a_load_of_the_model_registered_anew_pulls_its_own_storage(
    tmp_path: Path, storage: FaultServer
) -> None:
    # Re-registered with fixed files while its old pull runs: the new load must not be handed
    # the old artifact's path by joining that pull (one pull per model was keyed by id alone).
    storage.put("models/m2.fake", b"\1" * 1000)
    gate = Gate(storage)
    with _pod_with_puller(tmp_path, storage) as (pod, served, puller):
        old = pod.control.LoadModel.future(_load("m"), timeout=60)
        assert gate.asked.wait(30)
        anew = rpb.LoadModelRequest(model_id="m", storage=to_message(StorageRef("web", "m2.fake")))
        new = pod.control.LoadModel.future(anew, timeout=60)
        gate.open.set()
        assert old.result(30).model_id == "m"
        assert new.result(30).model_id == "m"
        wait_until(lambda: _settled(pod), what="the pulls done with")
        assert _pulls_answered(served) == 2
        assert "m2.fake" in _holders(pod, puller)
