"""The puller's Prometheus metrics, on a registry passed in (never the global one).

Labels are bounded: the storage type (s3, gcs, azure, http, file) and the failure reason (an
error class name of mesh.errors), never a model id, a key or a path.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_DOWNLOAD_BUCKETS = (
    0.01,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
)


class PullerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.downloaded_bytes = Counter(
            "mesh_puller_downloaded_bytes",
            "Bytes received from storage (retried bytes included)",
            ["type"],
            registry=registry,
        )
        self.download_seconds = Histogram(
            "mesh_puller_download_seconds",
            "Time to bring one artifact into the cache: listing, transfer, retries, checks, "
            "unpacking",
            ["type"],
            buckets=_DOWNLOAD_BUCKETS,
            registry=registry,
        )
        self.hits = Counter(
            "mesh_puller_cache_hits", "Pulls answered from the disk cache", registry=registry
        )
        self.misses = Counter(
            "mesh_puller_cache_misses", "Pulls that started a download", registry=registry
        )
        self.joined = Counter(
            "mesh_puller_joined_pulls",
            "Pulls that waited for a download another pull had started",
            registry=registry,
        )
        self.failures = Counter(
            "mesh_puller_failures", "Failed pulls by reason", ["reason"], registry=registry
        )
        self.retries = Counter(
            "mesh_puller_retries",
            "Storage requests retried or downloads restarted, by reason",
            ["reason"],
            registry=registry,
        )
        self.evictions = Counter(
            "mesh_puller_evictions", "Artifacts removed to make room", registry=registry
        )
        self.evicted_bytes = Counter(
            "mesh_puller_evicted_bytes", "Bytes removed to make room", registry=registry
        )
        self.cached_bytes = Gauge(
            "mesh_puller_cached_bytes", "Bytes of artifacts in the cache", registry=registry
        )
        self.reserved_bytes = Gauge(
            "mesh_puller_reserved_bytes",
            "Bytes set aside for downloads and unpacking in progress",
            registry=registry,
        )
        self.in_use_bytes = Gauge(
            "mesh_puller_in_use_bytes",
            "Bytes of artifacts held by at least one model (never evicted)",
            registry=registry,
        )
        self.capacity_bytes = Gauge(
            "mesh_puller_capacity_bytes", "The cache's budget in bytes", registry=registry
        )
        self.artifacts = Gauge("mesh_puller_artifacts", "Artifacts in the cache", registry=registry)
        self.downloads = Gauge(
            "mesh_puller_downloads_in_progress", "Downloads in progress", registry=registry
        )
