"""The router's per-request metrics, kept as plain numbers on the event loop
(mesh.router.metrics), scrape as prometheus_client's own Counter and Histogram write them: the
same text in both exposition formats, for the same requests, with and without `_created`."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics import disable_created_metrics, enable_created_metrics
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from mesh.router.metrics import _BUCKETS, RouterMetrics

NAMES = ("mesh_router_requests", "mesh_router_request_seconds", "mesh_router_forward_seconds")

# (method, status, seconds): on a bucket's bound, between bounds, past the last one, zero.
REQUESTS = [
    ("ModelInfer", "OK", 0.0004),
    ("ModelInfer", "OK", 0.0005),
    ("ModelInfer", "NOT_FOUND", 0.02),
    ("REST:infer", "OK", 31.0),
    ("ModelInfer", "OK", 0.0012345),
    ("ModelStreamInfer", "CANCELLED", 0.0),
    ("REST:infer", "INVALID_ARGUMENT", 2.5),
]
FORWARDS = [0.0005, 0.003, 40.0, 0.0, 1e-7]


@pytest.fixture(params=["created", "no created"])
def created(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.param == "no created":
        disable_created_metrics()
    try:
        yield
    finally:
        enable_created_metrics()


def scrape(registry: CollectorRegistry) -> list[str]:
    """The lines of the three metrics in both formats, each `_created` value (a clock's) cut."""
    texts = generate_latest(registry).decode() + generate_openmetrics(registry).decode()
    lines = [line for line in texts.splitlines() if any(name in line for name in NAMES)]
    return [re.sub(r"^([^#]\S*_created(?:\{[^}]*\})?) \S+$", r"\1 <time>", line) for line in lines]


@pytest.mark.usefixtures("created")
@pytest.mark.parametrize("requests", [0, 1, len(REQUESTS)])
def test_the_request_metrics_scrape_as_prometheus_clients_own(requests: int) -> None:
    ours = CollectorRegistry()
    metrics = RouterMetrics(ours)
    theirs = CollectorRegistry()
    counter = Counter(
        "mesh_router_requests", "API requests by method and gRPC status", ["method", "status"],
        registry=theirs,
    )  # fmt: skip
    latency = Histogram(
        "mesh_router_request_seconds", "API latency by method", ["method"], buckets=_BUCKETS,
        registry=theirs,
    )  # fmt: skip
    forward = Histogram(
        "mesh_router_forward_seconds", "Time a pod took to answer a forwarded request",
        buckets=_BUCKETS, registry=theirs,
    )  # fmt: skip
    for method, status, seconds in REQUESTS[:requests]:
        metrics.observe(method, status, seconds)
        counter.labels(method, status).inc()
        latency.labels(method).observe(seconds)
    for seconds in FORWARDS[:requests]:
        metrics.forward.observe(seconds)
        forward.observe(seconds)
    assert scrape(ours) == scrape(theirs)
    if requests:
        assert any("_created" in line for line in scrape(ours)) == (
            any("_created" in line for line in scrape(theirs))
        )


def test_a_scrape_reads_the_counts_as_the_registry_gives_them() -> None:
    registry = CollectorRegistry()
    metrics = RouterMetrics(registry)
    for method, status, seconds in REQUESTS:
        metrics.observe(method, status, seconds)
    labels = {"method": "ModelInfer", "status": "OK"}
    assert registry.get_sample_value("mesh_router_requests_total", labels) == 3
    bucket = {"method": "ModelInfer", "le": "0.0005"}
    assert registry.get_sample_value("mesh_router_request_seconds_bucket", bucket) == 2
    assert (
        registry.get_sample_value("mesh_router_request_seconds_count", {"method": "REST:infer"})
        == 2
    )
