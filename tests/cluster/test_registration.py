"""Leased registration of pods: records appear, follow the pod, survive faults, and go with it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from mesh.cluster.codec import Keys
from mesh.cluster.etcd import EtcdConfig, EtcdStore
from mesh.cluster.mirror import Mirror
from mesh.cluster.records import InstanceRecord, PlacementRecord, PlacementState
from mesh.cluster.registration import PodRegistration, PodState
from mesh.cluster.store import KeyValueStore
from mesh.errors import LeaseNotFound
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import grpc_predict_v2_pb2_grpc as pb_grpc
from mesh.retry import Backoff
from tests.cluster.etcd_server import EtcdServer
from tests.cluster.proxy import TcpProxy
from tests.helpers import free_port, infer_request, running_pod

FAST = Backoff(0.05, 0.5)


class FakePod:
    """A pod's state, as the registration reads it."""

    def __init__(self, pod_id: str = "pod-1") -> None:
        self.pod_id = pod_id
        self.models: dict[str, PlacementRecord] = {}
        self.used = 0

    def state(self) -> PodState:
        instance = InstanceRecord(
            self.pod_id, "127.0.0.1:1", 1000, self.used, len(self.models), updated_at=time.time()
        )
        return PodState(instance, tuple(self.models.values()))

    def load(self, model_id: str, size: int) -> None:
        self.models[model_id] = PlacementRecord(
            model_id, self.pod_id, PlacementState.LOADED, time.time(), size
        )
        self.used += size


async def test_registration_publishes_and_follows_the_pod(
    store: KeyValueStore, prefix: str
) -> None:
    keys = Keys(prefix)
    pod = FakePod()
    registration = PodRegistration(store, keys, pod.state, ttl=5, min_interval=0.05)
    mirror = Mirror(store, keys, FAST)
    await mirror.start()
    await registration.start()
    try:
        await registration.wait_registered()
        await mirror.wait_for(lambda m: "pod-1" in m.instances)
        pod.load("a", 100)
        registration.notify()
        await mirror.wait_for(lambda m: "a" in m.placements and m.instances["pod-1"].used == 100)
        assert mirror.placements["a"]["pod-1"].state is PlacementState.LOADED
        # Each write is one etcd transaction, one revision: count revisions, not the client's
        # counter (which moves only once etcd has answered).
        before = await store.revision()
        for _ in range(10):  # nothing changed: notifications write nothing
            registration.notify()
            await asyncio.sleep(0.06)  # spaced past min_interval: ten chances to publish
        del pod.models["a"]  # then one change, published after all of them
        registration.notify()
        await mirror.wait_for(lambda m: "a" not in m.placements)
        # Two writes for it: the instance (its model count) and the placement's
        # compare-and-delete, which comes last; nothing for the ten notifications.
        assert await store.revision() == before + 2
    finally:
        await registration.aclose(revoke=True)
    await mirror.wait_for(lambda m: "pod-1" not in m.instances)  # revoked: gone at once
    await mirror.aclose()


async def test_byte_counts_that_move_less_than_a_mib_are_not_published_at_once(
    store: KeyValueStore, prefix: str
) -> None:
    """The device's reading (on a CPU pod, the RSS) and the host tier's bytes move a little all
    the time: like `used`, they are compared in whole MiB, so the record is not rewritten at
    every notification (it still travels with the next heartbeat)."""
    keys = Keys(prefix)
    pod = FakePod()
    extra = {"device_used": 100 << 20, "host_used": 8 << 20, "host_model_bytes": (8 << 20,)}

    def state() -> PodState:
        base = pod.state()
        return PodState(dataclasses.replace(base.instance, **extra), base.placements)

    registration = PodRegistration(store, keys, state, ttl=5, min_interval=0.05)
    await registration.start()
    try:
        await registration.wait_registered()
        before = await store.revision()
        for i in range(5):
            extra["device_used"] = (100 << 20) + i * 4096
            extra["host_used"] = (8 << 20) + i * 4096
            registration.notify()
            await asyncio.sleep(0.06)  # spaced past min_interval: five chances to publish
        assert await store.revision() == before
        extra["device_used"] = 200 << 20  # a change the mesh should see
        registration.notify()
        mirror = Mirror(store, keys, FAST)
        await mirror.start()
        try:
            await mirror.wait_for(lambda m: m.instances["pod-1"].device_used == 200 << 20)
        finally:
            await mirror.aclose()
    finally:
        await registration.aclose()


async def test_lost_lease_registers_again_and_republishes(
    store: KeyValueStore, prefix: str
) -> None:
    keys = Keys(prefix)
    pod = FakePod()
    pod.load("a", 10)
    registration = PodRegistration(store, keys, pod.state, ttl=5, min_interval=0.05)
    mirror = Mirror(store, keys, FAST)
    await mirror.start()
    await registration.start()
    try:
        await registration.wait_registered()
        await mirror.wait_for(lambda m: "a" in m.placements)
        first = registration.lease
        await store.revoke(first)  # fault: the lease is gone, and with it every record
        await mirror.wait_for(lambda m: registration.lease not in (0, first), timeout=15)
        await mirror.wait_for(lambda m: "a" in m.placements and "pod-1" in m.instances)
        assert registration.registrations == 2
    finally:
        await registration.aclose()
        await mirror.aclose()


async def test_a_blocked_event_loop_does_not_lose_the_lease(
    store: KeyValueStore, prefix: str
) -> None:
    keys = Keys(prefix)
    pod = FakePod()
    registration = PodRegistration(store, keys, pod.state, ttl=2, min_interval=0.05)
    await registration.start()
    try:
        await registration.wait_registered()
        lease = registration.lease
        time.sleep(5)  # noqa: ASYNC251 -- the loop is stuck (a long framework call) for 2.5 TTLs
        await asyncio.sleep(0.3)
        assert registration.lease == lease
        assert await store.get(keys.instance("pod-1")) is not None
    finally:
        await registration.aclose()


@pytest.mark.slow
async def test_pod_keeps_serving_while_etcd_is_away_and_catches_up(
    etcd: EtcdServer, prefix: str, model_dir: Path
) -> None:
    keys = Keys(prefix)
    direct = EtcdStore(EtcdConfig.parse(etcd.url))
    mirror = Mirror(direct, keys, FAST)
    await mirror.start()
    with TcpProxy(etcd.client_port) as proxy:
        settings = {"etcd": proxy.url, "etcd_prefix": prefix, "pod_id": "pod-x", "lease_ttl": 30}
        with running_pod(models=model_dir, **settings) as pod:
            await mirror.wait_for(lambda m: "pod-x" in m.instances, timeout=15)
            proxy.cut()
            request = infer_request("mlp", input=np.ones((1, 64), np.float32))
            await asyncio.to_thread(pod.v2.ModelInfer, request)  # loads it, etcd away
            await asyncio.sleep(1)
            assert "mlp" not in mirror.placements
            proxy.restore()
            await mirror.wait_for(
                lambda m: m.placements.get("mlp", {}).get("pod-x") is not None, timeout=20
            )
            assert mirror.placements["mlp"]["pod-x"].state is PlacementState.LOADED
    await mirror.aclose()
    await direct.aclose()


def _pod_process(
    tmp_path: Path, etcd: EtcdServer, prefix: str, delay: float
) -> tuple[subprocess.Popen[bytes], str]:
    (tmp_path / "slow.fake").write_bytes(b"\0" * 100)
    (tmp_path / "mesh.json").write_text(json.dumps({"options": {"delay": str(delay)}}))
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.pod.slow_pod",
            str(tmp_path),
            str(port),
            etcd.url,
            "pod-p",
            prefix,
        ],
        cwd=Path(__file__).resolve().parents[2],
        stderr=subprocess.DEVNULL,
    )
    return proc, f"127.0.0.1:{port}"


@pytest.mark.slow
async def test_a_killed_pod_disappears_with_its_placements_within_the_ttl(
    etcd: EtcdServer, prefix: str, tmp_path: Path
) -> None:
    keys = Keys(prefix)
    store = EtcdStore(EtcdConfig.parse(etcd.url))
    mirror = Mirror(store, keys, FAST)
    await mirror.start()
    proc, address = _pod_process(tmp_path, etcd, prefix, delay=0)
    try:
        await mirror.wait_for(lambda m: "pod-p" in m.instances, timeout=30)
        stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))
        await asyncio.to_thread(stub.ModelMetadata, pb.ModelMetadataRequest(name="slow"))
        await mirror.wait_for(lambda m: "slow" in m.placements)
        entry = await store.get(keys.instance("pod-p"))
        assert entry is not None and entry.lease != 0
        proc.send_signal(signal.SIGKILL)
        await mirror.wait_for(
            lambda m: "pod-p" not in m.instances and "slow" not in m.placements, timeout=10
        )
        # Gone because its lease expired (nobody deleted it: the pod was killed).
        with pytest.raises(LeaseNotFound):
            await store.keep_alive(entry.lease)
    finally:
        proc.kill()
        proc.wait(10)
        await mirror.aclose()
        await store.aclose()


@pytest.mark.slow
async def test_a_pod_busy_in_a_long_load_keeps_its_lease(
    etcd: EtcdServer, prefix: str, tmp_path: Path
) -> None:
    keys = Keys(prefix)
    store = EtcdStore(EtcdConfig.parse(etcd.url))
    mirror = Mirror(store, keys, FAST)
    await mirror.start()
    proc, address = _pod_process(tmp_path, etcd, prefix, delay=7)  # 3.5 lease TTLs
    try:
        await mirror.wait_for(lambda m: "pod-p" in m.instances, timeout=30)
        created = (await store.get(keys.instance("pod-p"))).create_revision  # type: ignore[union-attr]
        stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))
        loading = asyncio.create_task(
            asyncio.to_thread(stub.ModelMetadata, pb.ModelMetadataRequest(name="slow"), timeout=30)
        )
        await mirror.wait_for(
            lambda m: m.placements.get("slow", {}).get("pod-p") is not None, timeout=10
        )
        assert mirror.placements["slow"]["pod-p"].state is PlacementState.LOADING
        await loading
        await mirror.wait_for(
            lambda m: m.placements["slow"]["pod-p"].state is PlacementState.LOADED, timeout=10
        )
        entry = await store.get(keys.instance("pod-p"))
        assert entry is not None
        assert entry.create_revision == created  # never expired and re-created
    finally:
        proc.kill()
        proc.wait(10)
        await mirror.aclose()
        await store.aclose()


async def test_a_second_process_with_a_live_pod_id_gives_up_and_leaves_the_first_alone(
    store: KeyValueStore, prefix: str
) -> None:
    keys = Keys(prefix)
    first_pod, second_pod = FakePod("dup"), FakePod("dup")
    first_pod.load("a", 10)
    first = PodRegistration(store, keys, first_pod.state, ttl=2, min_interval=0.05)
    second = PodRegistration(store, keys, second_pod.state, ttl=2, min_interval=0.05)
    mirror = Mirror(store, keys, FAST)
    await mirror.start()
    await first.start()
    try:
        await first.wait_registered()
        await second.start()
        await asyncio.wait_for(second.conflicted.wait(), 10)  # one lease TTL and a second
        assert second.conflict is not None and "'dup'" in str(second.conflict)
        assert second.registrations == 0 and second.lease == 0
        await second.aclose(revoke=True)
        # The live pod's records are untouched by the second's start and stop.
        assert mirror.instances["dup"].incarnation == first.incarnation
        assert "dup" in mirror.placements["a"]
    finally:
        await second.aclose()
        await first.aclose()
        await mirror.aclose()


async def test_a_pod_deletes_only_the_records_it_wrote(store: KeyValueStore, prefix: str) -> None:
    from mesh.cluster.codec import encode

    keys = Keys(prefix)
    pod = FakePod()
    pod.load("a", 10)
    registration = PodRegistration(store, keys, pod.state, ttl=5, min_interval=0.05)
    mirror = Mirror(store, keys, FAST)
    await mirror.start()
    await registration.start()
    try:
        await registration.wait_registered()
        await mirror.wait_for(lambda m: "a" in m.placements)
        # Someone else (a router's claim for a new load) writes the key under its own lease.
        other = await store.grant(5)
        theirs = PlacementRecord("a", "pod-1", PlacementState.LOADING, time.time(), 77)
        await store.put(keys.placement("a", "pod-1"), encode(theirs), other)
        await mirror.wait_for(lambda m: m.placements["a"]["pod-1"].size == 77)
        writes = registration.writes
        del pod.models["a"]  # the pod unloads its copy
        registration.notify()
        deadline = time.monotonic() + 10
        while registration.writes == writes:  # the pod has acted on the unload
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert mirror.placements["a"]["pod-1"] == theirs
        await store.revoke(other)
    finally:
        await registration.aclose()
        await mirror.aclose()
