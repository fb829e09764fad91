"""`mesh up`'s elastic pool: the controller started beside it, with its metrics endpoint.

running = start_pool(settings.pool, pods, etcd_url, "/mesh/", "127.0.0.1", capacity)
running.metrics_port                # mesh_pool_* on /metrics
running.stop()
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from mesh.cluster.etcd import EtcdConfig, EtcdStore
from mesh.cluster.store import KeyValueStore
from mesh.lifecycle import MetricsEndpoint
from mesh.pool.controller import ControllerThread, PoolController, PoolMetrics
from mesh.pool.local import LocalPods
from mesh.pool.settings import PoolSettings


class RunningPool:
    def __init__(self, thread: ControllerThread, endpoint: MetricsEndpoint, port: int) -> None:
        self._thread = thread
        self._endpoint = endpoint
        self.metrics_port = port

    @property
    def controller(self) -> PoolController | None:
        return self._thread.controller

    def stop(self) -> None:
        self._thread.stop()
        self._endpoint.close()


def start_pool(
    settings: PoolSettings, pods: LocalPods, etcd: str, prefix: str, host: str, capacity: int
) -> RunningPool:
    registry = CollectorRegistry()
    metrics = PoolMetrics(registry)
    policy = settings.policy(capacity)

    def build() -> tuple[KeyValueStore, PoolController]:
        store = EtcdStore(EtcdConfig.parse(etcd))
        controller = PoolController(
            store, prefix, policy, pods, interval=settings.pool_interval, metrics=metrics
        )
        return store, controller

    thread = ControllerThread(build)
    thread.start()
    endpoint = MetricsEndpoint()
    port = endpoint.start(settings.pool_metrics_port, host, registry)
    return RunningPool(thread, endpoint, port)
