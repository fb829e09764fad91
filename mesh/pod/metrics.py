"""The pod's Prometheus metrics, on a registry passed in (never the global one).

Inference metrics carry a `model` label only when per-model labels are asked for: a pod cycles
through thousands of models, and a series per model would swamp Prometheus.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class PodMetrics:
    def __init__(self, registry: CollectorRegistry, per_model: bool = False) -> None:
        self.per_model = per_model
        labels = ["model", "status"] if per_model else ["status"]
        self.requests = Counter(
            "mesh_pod_inference_requests",
            "Inference requests by gRPC status",
            labels,
            registry=registry,
        )
        self.latency = Histogram(
            "mesh_pod_inference_seconds",
            "Inference latency in the pod, decode to encode",
            ["model"] if per_model else [],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_rows = Histogram(
            "mesh_pod_batch_rows",
            "Rows per framework call of models that batch (batch.max_size)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=registry,
        )
        self.load_seconds = Histogram(
            "mesh_pod_load_seconds", "Model load time", buckets=_LOAD_BUCKETS, registry=registry
        )
        self.unload_seconds = Histogram(
            "mesh_pod_unload_seconds",
            "Model unload time",
            buckets=_LOAD_BUCKETS,
            registry=registry,
        )
        self.load_failures = Counter(
            "mesh_pod_load_failures",
            "Failed model loads by reason",
            ["reason"],
            registry=registry,
        )
        self.evictions = Counter(
            "mesh_pod_evictions", "Models evicted by reason", ["reason"], registry=registry
        )
        # tier="device": the models loaded and loading (on the GPU, or in host memory on a
        # CPU-only pod); tier="host": the host tier's demoted models (0 without one).
        self.capacity = Gauge(
            "mesh_pod_capacity_bytes",
            "Bytes of models the pod may hold, per tier",
            ["tier"],
            registry=registry,
        )
        self.used = Gauge(
            "mesh_pod_used_bytes",
            "Bytes held by models, per tier",
            ["tier"],
            registry=registry,
        )
        self.demotions = Counter(
            "mesh_pod_demotions",
            "Models evicted from the device tier into the host tier",
            registry=registry,
        )
        self.promotions = Counter(
            "mesh_pod_promotions",
            "Models brought back from the host tier (no file read, no pull)",
            registry=registry,
        )
        self.promotion_seconds = Histogram(
            "mesh_pod_promotion_seconds",
            "Time to bring a model back from the host tier",
            buckets=_LOAD_BUCKETS,
            registry=registry,
        )
        self.host_evictions = Counter(
            "mesh_pod_host_evictions",
            "Models let go from the host tier for room (least recently used first)",
            registry=registry,
        )
        self.demoted = Gauge(
            "mesh_pod_models_demoted", "Models in the host tier", registry=registry
        )
        # Measured, read at scrape time: kind="total" or "used", per device ("cuda:0", "host").
        self.device_memory = Gauge(
            "mesh_pod_device_memory_bytes",
            "Memory of the pod's devices as measured (NVML, torch, the host's RSS)",
            ["device", "kind"],
            registry=registry,
        )
        self.recycles = Counter(
            "mesh_pod_recycles",
            "Recycles because a runtime did not give device memory back after unloads",
            ["runtime"],
            registry=registry,
        )
        self.unreturned = Gauge(
            "mesh_pod_unreturned_bytes",
            "Device bytes a runtime's unloads have not given back",
            ["runtime"],
            registry=registry,
        )
        self.models_loaded = Gauge(
            "mesh_pod_models_loaded", "Models loaded and ready", registry=registry
        )
        self.loading = Gauge("mesh_pod_models_loading", "Loads in progress", registry=registry)
        # Read at scrape time (set_function): how long ago the least recently used model was
        # last used, the pod's side of the mesh's approximate global LRU. 0: no model.
        self.lru_age = Gauge(
            "mesh_pod_lru_age_seconds",
            "Seconds since the least recently used loaded model was last used",
            registry=registry,
        )
        self.in_flight = Gauge(
            "mesh_pod_inference_in_flight", "Inference requests in flight", registry=registry
        )

    def observe_request(self, model: str, status: str, seconds: float | None) -> None:
        if self.per_model:
            self.requests.labels(model, status).inc()
            if seconds is not None:
                self.latency.labels(model).observe(seconds)
        else:
            self.requests.labels(status).inc()
            if seconds is not None:
                self.latency.observe(seconds)
