"""The router's Prometheus metrics, on a registry passed in.

Cluster totals (models registered and loaded, pods, capacity and used bytes) are set only by
the elected leader, so that a dashboard summing over routers counts each once.

The metrics every request moves (its count and latency, and its forward's) are plain numbers
in dicts, kept on the event loop and turned into samples only when /metrics is scraped
(`LoopCounter`, `LoopHistogram`, registered through `LoopMetrics`): prometheus_client's label
lookup, locks and bucket loop cost the hit path of `mesh serve` a quarter of its router's CPU.
A scrape reads exactly what prometheus_client's Counter and Histogram would have written
(tests/router/test_metrics.py compares the two texts).
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Iterable, Sequence

import prometheus_client.metrics
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def _created() -> bool:
    """Whether prometheus_client writes `_created` samples (its PROMETHEUS_DISABLE_CREATED_SERIES
    and disable_created_metrics(), which keep the switch in its module)."""
    return bool(prometheus_client.metrics._use_created)


class LoopCounter:
    """A counter with labels, counted by the event loop's thread alone: `inc(("a", "b"))`.
    Its samples are prometheus_client Counter's: name_total and name_created per label set, in
    the order the label sets were first counted."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._values: dict[tuple[str, ...], int] = {}
        self._created: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...]) -> None:
        values = self._values
        count = values.get(labels)
        if count is None:
            self._created[labels] = time.time()
            count = 0
        values[labels] = count + 1

    def describe(self) -> Metric:
        return Metric(self.name, self.documentation, "counter")

    def collect(self) -> Metric:
        metric = self.describe()
        created = self._created
        # list(): one step of the GIL, so the loop's thread changes nothing under the copy.
        for labels, count in list(self._values.items()):
            series = dict(zip(self.labelnames, labels, strict=True))
            metric.add_sample(f"{self.name}_total", series, float(count))
            if _created():
                metric.add_sample(f"{self.name}_created", series, created[labels])
        return metric


class LoopHistogram:
    """A histogram (with labels or none), observed by the event loop's thread alone:
    `observe(seconds, ("a",))`. Its samples are prometheus_client Histogram's: cumulative
    buckets (an observation on a bound counts in that bucket), _count, _sum and _created; one
    with no labels has its series from the start, as there."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = _BUCKETS,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._bounds = [float(b) for b in buckets]
        if self._bounds[-1] != math.inf:
            self._bounds.append(math.inf)
        # labels -> a count per bucket (not cumulative) and, last, the sum.
        self._series: dict[tuple[str, ...], list[float]] = {}
        self._created: dict[tuple[str, ...], float] = {}
        if not self.labelnames:
            self._new(())

    def _new(self, labels: tuple[str, ...]) -> list[float]:
        self._created[labels] = time.time()
        series = self._series[labels] = [0] * len(self._bounds) + [0.0]
        return series

    def observe(self, amount: float, labels: tuple[str, ...] = ()) -> None:
        series = self._series.get(labels)
        if series is None:
            series = self._new(labels)
        series[bisect.bisect_left(self._bounds, amount)] += 1
        series[-1] += amount

    def describe(self) -> Metric:
        return Metric(self.name, self.documentation, "histogram")

    def collect(self) -> Metric:
        metric = self.describe()
        created = self._created
        bounds = [floatToGoString(b) for b in self._bounds]  # type: ignore[no-untyped-call]
        for labels, counts in list(self._series.items()):
            counts = list(counts)  # one copy: buckets and sum of the same observations
            series = dict(zip(self.labelnames, labels, strict=True))
            total = 0.0
            for bound, count in zip(bounds, counts, strict=False):  # the sum, last, is no bucket
                total += count
                metric.add_sample(f"{self.name}_bucket", {**series, "le": bound}, total)
            metric.add_sample(f"{self.name}_count", series, total)
            metric.add_sample(f"{self.name}_sum", series, counts[-1])
            if _created():
                metric.add_sample(f"{self.name}_created", series, created[labels])
        return metric


class LoopMetrics:
    """The registry's collector of loop-kept metrics: each one scraped in the order given."""

    def __init__(
        self, metrics: Sequence[LoopCounter | LoopHistogram], registry: CollectorRegistry
    ) -> None:
        self._metrics = tuple(metrics)
        registry.register(self)

    def describe(self) -> Iterable[Metric]:
        return [m.describe() for m in self._metrics]

    def collect(self) -> Iterable[Metric]:
        return [m.collect() for m in self._metrics]


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = LoopCounter(
            "mesh_router_requests", "API requests by method and gRPC status", ["method", "status"]
        )
        self.latency = LoopHistogram(
            "mesh_router_request_seconds", "API latency by method", ["method"]
        )
        self.forward = LoopHistogram(
            "mesh_router_forward_seconds", "Time a pod took to answer a forwarded request"
        )
        LoopMetrics((self.requests, self.latency, self.forward), registry)
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
        """One API request answered (the hit path: plain numbers, see the module)."""
        self.requests.inc((method, status))
        self.latency.observe(seconds, (method,))
