"""Per-model metrics that can stay on: the K busiest models keep their label, the rest are
`other`, and a pod's series stay bounded however many models it serves."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from mesh.pod.metrics import PodMetrics, TopModels
from tests.helpers import infer_request, running_pod


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _series(registry: CollectorRegistry, name: str) -> dict[str, float]:
    out = {}
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith(name + "{"):
            labels, value = line.rsplit(" ", 1)
            out[labels[len(name) :]] = float(value)
    return out


def test_the_busiest_models_keep_their_label_and_the_rest_count_as_other() -> None:
    clock = Clock()
    registry = CollectorRegistry()
    metrics = PodMetrics(registry, top_models=2, top_interval=60, clock=clock)
    for model, n in (("a", 30), ("b", 20), ("c", 5), ("d", 1)):
        for _ in range(n):
            metrics.observe_request(model, "OK", 0.01)
    requests = _series(registry, "mesh_pod_model_requests_total")
    # a and b took the two slots first; c and d are other.
    assert requests == {
        '{model="a",status="OK"}': 30.0,
        '{model="b",status="OK"}': 20.0,
        '{model="other",status="OK"}': 6.0,
    }
    # The next window: d turns busy (counted as other while the slots are taken), b goes quiet.
    clock.now = 61.0
    for _ in range(40):
        metrics.observe_request("d", "OK", 0.01)
    # At the next turn a and d are the busiest: d takes b's slot.
    clock.now = 122.0
    metrics.observe_request("a", "NOT_FOUND", None)
    metrics.observe_request("d", "OK", 0.01)
    requests = _series(registry, "mesh_pod_model_requests_total")
    assert '{model="b",status="OK"}' not in requests  # its series is gone: bounded cardinality
    assert requests['{model="a",status="NOT_FOUND"}'] == 1.0
    assert requests['{model="d",status="OK"}'] == 1.0
    assert requests['{model="other",status="OK"}'] == 46.0
    latency = _series(registry, "mesh_pod_model_inference_seconds_count")
    assert set(latency) == {'{model="a"}', '{model="d"}', '{model="other"}'}
    # Totals are unaffected by the labelling.
    assert _series(registry, "mesh_pod_inference_requests_total")['{status="OK"}'] == 97.0


def test_many_models_never_export_more_than_k_plus_other() -> None:
    clock = Clock()
    registry = CollectorRegistry()
    metrics = PodMetrics(registry, top_models=3, top_interval=10, clock=clock)
    rng = np.random.default_rng(0)
    for step in range(5000):
        clock.now = step * 0.05
        metrics.observe_request(f"m{int(rng.zipf(1.3)) % 500}", "OK", 0.001)
    models = {k.split(",")[0] for k in _series(registry, "mesh_pod_model_requests_total")}
    assert len(models) <= 4 and '{model="other"' in models


def test_top_models_zero_turns_the_per_model_series_off() -> None:
    registry = CollectorRegistry()
    PodMetrics(registry, top_models=0).observe_request("a", "OK", 0.01)
    assert _series(registry, "mesh_pod_model_requests_total") == {}
    with pytest.raises(ValueError, match="k must be"):
        TopModels(-1)


def test_a_pod_exports_its_busiest_models_by_name(model_dir) -> None:  # type: ignore[no-untyped-def]
    with running_pod(models=model_dir, metrics_top_models=1) as pod:
        x = np.zeros((1, 64), np.float32)
        for _ in range(3):
            pod.v2.ModelInfer(infer_request("mlp", input=x))
        pod.v2.ModelInfer(infer_request("xgb", input__0=x))
        text = pod.metrics_text()
        assert 'mesh_pod_model_requests_total{model="mlp",status="OK"} 3.0' in text
        assert 'mesh_pod_model_requests_total{model="other",status="OK"} 1.0' in text
        assert 'mesh_pod_model_inference_seconds_count{model="mlp"} 3.0' in text
