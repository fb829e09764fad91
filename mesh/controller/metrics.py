"""The controller's Prometheus metrics, on a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.reconciles = Counter(
            "mesh_controller_reconciles",
            "Predictor reconciles by result (ok, conflict, error)",
            ["result"],
            registry=registry,
        )
        self.reconcile_seconds = Histogram(
            "mesh_controller_reconcile_seconds",
            "Time to reconcile one Predictor",
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.status_writes = Counter(
            "mesh_controller_status_writes", "Predictor status updates written", registry=registry
        )
        self.watch_restarts = Counter(
            "mesh_controller_watch_restarts",
            "Predictor watches started again, by reason (gone: relisted; error: resumed)",
            ["reason"],
            registry=registry,
        )
        # Pools (ServingRuntimes): the pods the pool policy asks for, and those ready.
        self.pool_desired = Gauge(
            "mesh_controller_pool_desired_pods",
            "Pods the pool policy wants per pool (ServingRuntime)",
            ["pool"],
            registry=registry,
        )
        self.pool_pods = Gauge(
            "mesh_controller_pool_pods",
            "Pods of each pool's Deployment, as its scale reports them",
            ["pool"],
            registry=registry,
        )
        self.leader = Gauge(
            "mesh_controller_leader", "1 while this replica holds the Lease", registry=registry
        )
