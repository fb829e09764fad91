"""The pool controller's acting on decisions, on the in-memory store (which passes the etcd
contract suite) and a launcher that records what it is asked: a held request starts one pod,
not one per step while it starts; a pool at rest drains one pod at a time, only after the
cool-down, and never while another drains."""

from __future__ import annotations

from dataclasses import dataclass, field

from mesh.cluster.codec import Keys, encode
from mesh.cluster.demand import DemandRecord, demand_key, encode_demand
from mesh.cluster.memory import MemoryStore
from mesh.cluster.records import InstanceRecord
from mesh.placement.pool import PoolPolicy
from mesh.pool.controller import PoolController
from mesh.pool.local import Exited
from tests.helpers import wait_until_async

ROOT = "/pool-test/"


@dataclass
class Launcher:
    started: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    alive: set[str] = field(default_factory=set)
    exits: list[Exited] = field(default_factory=list)

    def start_pod(self) -> str:
        pod_id = f"pod-{len(self.started)}"
        self.started.append(pod_id)
        self.alive.add(pod_id)
        return pod_id

    def stop_pod(self, pod_id: str) -> bool:
        self.stopped.append(pod_id)
        return True

    def reap(self) -> list[Exited]:
        exits, self.exits = self.exits, []
        return exits

    def running(self) -> set[str]:
        return self.alive - set(self.stopped)

    def stopping(self) -> set[str]:
        return self.alive & set(self.stopped)


async def _register(store: MemoryStore, pod_id: str, draining: bool = False) -> None:
    record = InstanceRecord(pod_id, f"127.0.0.1:{1000 + int(pod_id[4:])}", 2**30, draining=draining)
    await store.put(Keys(ROOT).instance(pod_id), encode(record))


async def test_a_held_request_starts_one_pod_and_an_idle_pool_drains_one_at_a_time() -> None:
    store = MemoryStore()
    now = [1000.0]
    launcher = Launcher()
    policy = PoolPolicy(min_pods=0, max_pods=3, window=10, scale_down_after=5, pod_capacity=2**30)
    controller = PoolController(store, ROOT, policy, launcher, clock=lambda: now[0])
    await controller.mirror.start()
    try:
        assert (await controller.step()).desired == 0 and launcher.started == []
        demand = DemandRecord("default", "m", "router-1", 1, 4096, now[0])
        await store.put(demand_key(ROOT, demand), encode_demand(demand))
        await controller.step()
        assert launcher.started == ["pod-0"]
        await controller.step()  # still starting, not registered: not started twice
        assert launcher.started == ["pod-0"]
        await _register(store, "pod-0")
        await wait_until_async(lambda: "pod-0" in controller.mirror.instances)
        await controller.step()
        assert launcher.started == ["pod-0"] and launcher.stopped == []

        # A second pod (as after a burst), then idle: one drain at a time, after the cool-down.
        launcher.start_pod()
        await _register(store, "pod-1")
        await wait_until_async(lambda: "pod-1" in controller.mirror.instances)
        await store.delete(demand_key(ROOT, demand))
        await controller.step()  # the need fell: the cool-down starts
        assert launcher.stopped == []
        now[0] += 6
        await controller.step()
        assert len(launcher.stopped) == 1
        first = launcher.stopped[0]
        now[0] += 6
        await controller.step()  # the first still drains: no second drain yet
        assert launcher.stopped == [first]
        # It left: its process exited and its record went with its lease.
        launcher.alive.discard(first)
        launcher.exits.append(Exited(first, 0, asked=True))
        await store.delete(Keys(ROOT).instance(first))
        await wait_until_async(lambda: first not in controller.mirror.instances)
        now[0] += 6
        await controller.step()
        assert len(launcher.stopped) == 2 and launcher.stopped[1] != first
        assert launcher.started == ["pod-0", "pod-1"]  # down to zero, none started meanwhile
    finally:
        await controller.aclose()
