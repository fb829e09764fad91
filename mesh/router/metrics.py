"""The router's Prometheus metrics, on a registry passed in.

Cluster totals (models registered and loaded, pods, capacity and used bytes) are set only by
the elected leader, so that a dashboard summing over routers counts each once.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self.requests = Counter(
            "mesh_router_requests", "API requests by method and gRPC status",
            ["method", "status"], registry=registry,
        )  # fmt: skip
        self.latency = Histogram(
            "mesh_router_request_seconds", "API latency by method", ["method"],
            buckets=_BUCKETS, registry=registry,
        )  # fmt: skip
        self.forward = Histogram(
            "mesh_router_forward_seconds", "Time a pod took to answer a forwarded request",
            buckets=_BUCKETS, registry=registry,
        )  # fmt: skip
        self.miss = Histogram(
            "mesh_router_cache_miss_seconds", "Time to get a copy loaded on a cache miss",
            buckets=_BUCKETS, registry=registry,
        )  # fmt: skip
        # ModelStreamInfer: from the request to the first response forwarded (for a generative
        # model, its first token, miss included), and the responses forwarded (tokens).
        self.stream_first = Histogram(
            "mesh_router_stream_first_response_seconds",
            "Time to the first response of a stream request (first token)",
            buckets=_BUCKETS, registry=registry,
        )  # fmt: skip
        self.stream_responses = Counter(
            "mesh_router_stream_responses", "Responses forwarded on streams (tokens)",
            registry=registry,
        )  # fmt: skip
        self.retries = Counter(
            "mesh_router_retries", "Forwards retried on another copy", ["reason"],
            registry=registry,
        )  # fmt: skip
        self.loads = Counter(
            "mesh_router_loads", "Loads this router asked a pod for, by outcome", ["outcome"],
            registry=registry,
        )  # fmt: skip
        # Scale from zero (mesh.router.held): requests held for a pool with no pod, and the
        # seconds from a request's hold to its answer (pod start, registration, load, forward).
        self.held = Gauge(
            "mesh_router_held_requests", "Requests held for a pool with no pod to serve them",
            ["pool"], registry=registry,
        )  # fmt: skip
        self.cold_start = Histogram(
            "mesh_router_cold_start_seconds",
            "Seconds from a request's hold (no pod up) to its answer",
            buckets=(0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120), registry=registry,
        )  # fmt: skip
        self.leader = Gauge("mesh_router_leader", "1 on the elected leader", registry=registry)
        self.models_registered = Gauge(
            "mesh_cluster_models_registered", "Registered models (leader only)", registry=registry
        )
        self.models_loaded = Gauge(
            "mesh_cluster_models_loaded", "Models with a loaded copy (leader only)",
            registry=registry,
        )  # fmt: skip
        self.copies = Gauge("mesh_cluster_copies", "Loaded copies (leader only)", registry=registry)
        self.pods = Gauge("mesh_cluster_pods", "Live pods (leader only)", registry=registry)
        self.capacity = Gauge(
            "mesh_cluster_capacity_bytes", "Pods' capacity (leader only)", registry=registry
        )
        self.used = Gauge("mesh_cluster_used_bytes", "Pods' used bytes (leader only)",
                          registry=registry)  # fmt: skip
        # The approximate global LRU's age: when every pod is full, a miss evicts on the pod
        # whose least recently used model is oldest. Falling low means the mesh churns.
        self.lru_age = Gauge(
            "mesh_cluster_lru_age_seconds",
            "Seconds since the oldest least-recently-used model in the mesh was used (leader only)",
            registry=registry,
        )
        self.models_failed = Gauge(
            "mesh_cluster_models_failed",
            "Models whose last load failed on some pod (leader only)",
            registry=registry,
        )

    def observe(self, method: str, status: str, seconds: float) -> None:
        # labels() costs a lock and a dict build per call: keep the children (a hot path).
        children = self._children.get((method, status))
        if children is None:
            children = (self.requests.labels(method, status), self.latency.labels(method))
            self._children[(method, status)] = children
        children[0].inc()
        children[1].observe(seconds)
