"""The pod's Prometheus metrics, on a registry passed in (never the global one).

A pod cycles through thousands of models, and a series per model would swamp Prometheus (the
reason ModelMesh kept per-model metrics off). So the per-model series,
`mesh_pod_model_requests_total{model,status}` and `mesh_pod_model_inference_seconds{model}`,
label only the pod's K busiest models (`--metrics-top-models`, default 10); every other
model's requests count under `model="other"`. Which models are the busiest is decided every
`--metrics-top-interval` seconds from request counts that halve each time (a moving window);
a model that drops out of the K loses its series (Prometheus treats that as the series ending),
so a pod exports at most K + 1 models' series however many it serves. Between decisions a
newcomer takes a free slot at once. The totals (`mesh_pod_inference_requests_total{status}`,
`mesh_pod_inference_seconds`) carry no model label; `--per-model-metrics` puts one on them
for every model (unbounded: for small fleets).
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

OTHER = "other"


class TopModels:
    """Which models keep their own label: the K busiest over a moving window.

        top = TopModels(k=10, interval=60, on_drop=forget_series)
        label = top.label(model_id)      # the model's id, or "other"

    `label` is on the request path: a dict increment and a set lookup, and once per interval
    a sort of the window's counts (bounded to 4K entries).
    """

    def __init__(
        self,
        k: int,
        interval: float = 60.0,
        on_drop: Callable[[str], None] = lambda model: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if k < 0 or interval <= 0:
            raise ValueError("k must be >= 0 and interval > 0")
        self.k = k
        self.interval = interval
        self._on_drop = on_drop
        self._clock = clock
        self._counts: collections.Counter[str] = collections.Counter()
        self.labelled: set[str] = set()
        self._next = clock() + interval

    def label(self, model: str, count: bool = True) -> str:
        """The model's label; `count=False` for a second series of one request (it does not
        count the request again towards the K busiest)."""
        if self.k == 0:
            return OTHER
        if count:
            self._counts[model] += 1
        if self._clock() >= self._next:
            self._rotate()
        if model in self.labelled:
            return model
        if len(self.labelled) < self.k and model != OTHER:
            self.labelled.add(model)
            return model
        return OTHER

    def _rotate(self) -> None:
        self._next = self._clock() + self.interval
        busiest = self._counts.most_common(4 * self.k)
        keep = {m for m, _ in busiest[: self.k] if m != OTHER}
        for model in sorted(self.labelled - keep):
            self._on_drop(model)
        self.labelled = keep
        # Halve the window: a model's count is an exponentially weighted request count.
        self._counts = collections.Counter({m: c // 2 for m, c in busiest if c // 2})


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
    def __init__(
        self,
        registry: CollectorRegistry,
        per_model: bool = False,
        top_models: int = 10,
        top_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
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
        # Generative models, labelled as the requests are: every model with per-model labels,
        # else the top-K busiest (the rest as "other"), else none.
        self._gen_labelled = bool(per_model or top_models)
        gen_labels = ["model"] if self._gen_labelled else []
        self.time_to_first_token = Histogram(
            "mesh_pod_time_to_first_token_seconds",
            "Generative requests: from arrival to the first token",
            gen_labels,
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.time_per_output_token = Histogram(
            "mesh_pod_time_per_output_token_seconds",
            "Generative requests: mean time per token after the first",
            gen_labels,
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.generation_queue = Histogram(
            "mesh_pod_generation_queue_seconds",
            "Generative requests: waiting for a place in the model's batch",
            gen_labels,
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.output_tokens = Counter(
            "mesh_pod_output_tokens",
            "Tokens generated (rate() of it is tokens/s)",
            gen_labels,
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "mesh_pod_prompt_tokens", "Prompt tokens processed", gen_labels, registry=registry
        )
        self.top = TopModels(top_models, top_interval, self._forget_model, clock)
        if top_models:
            self.model_requests = Counter(
                "mesh_pod_model_requests",
                f"Inference requests of the pod's {top_models} busiest models by gRPC status "
                f"(the rest as model={OTHER!r})",
                ["model", "status"],
                registry=registry,
            )
            self.model_latency = Histogram(
                "mesh_pod_model_inference_seconds",
                f"Inference latency of the pod's {top_models} busiest models "
                f"(the rest as model={OTHER!r})",
                ["model"],
                buckets=_LATENCY_BUCKETS,
                registry=registry,
            )
        self._statuses: dict[str, set[str]] = collections.defaultdict(set)
        # labels() takes a lock and builds a key per call: the request path keeps the children
        # it has used, dropped with their series (_forget_model).
        self._top_requests: dict[tuple[str, str], Any] = {}
        self._top_latency: dict[str, Any] = {}
        self._totals: dict[str, Any] = {}

    def _forget_model(self, model: str) -> None:
        for status in self._statuses.pop(model, ()):
            self._top_requests.pop((model, status), None)
            self.model_requests.remove(model, status)
        self._top_latency.pop(model, None)
        with contextlib.suppress(KeyError):  # no successful request yet: no latency series
            self.model_latency.remove(model)
        if not self.per_model:
            for metric in self._generation_metrics():
                with contextlib.suppress(KeyError):  # not a generative model
                    metric.remove(model)

    def _generation_metrics(self) -> tuple[Any, ...]:
        return (
            self.time_to_first_token,
            self.time_per_output_token,
            self.generation_queue,
            self.output_tokens,
            self.prompt_tokens,
        )

    def observe_generation(self, model: str, stats: Any) -> None:
        """One finished generative request (mesh.llm.engine.Stats)."""

        # The request itself counts the model towards the top K (observe_request).
        label = model if self.per_model else self.top.label(model, count=False)

        def of(metric: Any) -> Any:
            return metric.labels(label) if self._gen_labelled else metric

        of(self.time_to_first_token).observe(stats.first_token_seconds)
        if stats.completion_tokens > 1:
            of(self.time_per_output_token).observe(
                stats.decode_seconds / (stats.completion_tokens - 1)
            )
        of(self.generation_queue).observe(stats.queue_seconds)
        of(self.output_tokens).inc(stats.completion_tokens)
        of(self.prompt_tokens).inc(stats.prompt_tokens)

    def observe_request(self, model: str, status: str, seconds: float | None) -> None:
        if self.top.k:
            label = self.top.label(model)
            counter = self._top_requests.get((label, status))
            if counter is None:
                if label != OTHER:
                    self._statuses[label].add(status)
                counter = self.model_requests.labels(label, status)
                self._top_requests[(label, status)] = counter
            counter.inc()
            if seconds is not None:
                histogram = self._top_latency.get(label)
                if histogram is None:
                    histogram = self._top_latency[label] = self.model_latency.labels(label)
                histogram.observe(seconds)
        if self.per_model:
            self.requests.labels(model, status).inc()
            if seconds is not None:
                self.latency.labels(model).observe(seconds)
        else:
            total = self._totals.get(status)
            if total is None:
                total = self._totals[status] = self.requests.labels(status)
            total.inc()
            if seconds is not None:
                self.latency.observe(seconds)
