"""The mesh at a glance from a mirror's records: per-pod views and the activity window."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from mesh.cluster.mirror import Change
from mesh.cluster.records import (
    InstanceRecord,
    ModelRecord,
    PlacementRecord,
    PlacementState,
    VModelRecord,
)
from mesh.router.overview import Activity, snapshot

LOADED, LOADING, FAILED = PlacementState.LOADED, PlacementState.LOADING, PlacementState.FAILED


@dataclass
class Records:
    models: dict[str, ModelRecord] = field(default_factory=dict)
    vmodels: dict[str, VModelRecord] = field(default_factory=dict)
    instances: dict[str, InstanceRecord] = field(default_factory=dict)
    placements: dict[str, dict[str, PlacementRecord]] = field(default_factory=dict)

    def place(self, model: str, pod: str, state: PlacementState, **kw: Any) -> Change:
        record = PlacementRecord(model, pod, state, since=kw.pop("since", 1.0), **kw)
        self.placements.setdefault(model, {})[pod] = record
        return Change("placement", f"{model}/{pod}", record)

    def remove(self, model: str, pod: str) -> Change:
        del self.placements[model][pod]
        return Change("placement", f"{model}/{pod}", None)


def test_loads_evictions_and_failures_are_counted_per_minute_and_per_pod() -> None:
    mesh = Records(
        instances={"a": InstanceRecord("a", "a:1", 100), "b": InstanceRecord("b", "b:1", 100)}
    )
    activity = Activity(window_minutes=3)
    t = 600.0
    activity.observe([mesh.place("m1", "a", LOADING)], mesh, t)
    activity.observe([mesh.place("m1", "a", LOADED, size=10)], mesh, t + 1)
    # The pod publishes the same copy again with a new last_used: not a second load.
    activity.observe([mesh.place("m1", "a", LOADED, size=10, last_used=5.0)], mesh, t + 2)
    activity.observe([mesh.place("m2", "b", FAILED, error="boom")], mesh, t + 61)
    activity.observe([mesh.remove("m1", "a")], mesh, t + 62)  # pod a stays: an eviction
    activity.miss("m1", t + 62)
    activity.observe([mesh.place("m3", "b", LOADED)], mesh, t + 63)
    del mesh.instances["b"]
    activity.observe([mesh.remove("m3", "b")], mesh, t + 64)  # pod b went away: no eviction
    minutes = activity.minutes(t + 64)
    assert [m.start for m in minutes] == [540.0, 600.0, 660.0]
    assert (minutes[1].loads, minutes[1].evictions) == (1, 0)
    assert (minutes[2].loads, minutes[2].evictions, minutes[2].failures, minutes[2].misses) == (
        1, 1, 1, 1,
    )  # fmt: skip
    assert minutes[2].by_pod["a"]["evictions"] == 1 and minutes[2].by_pod["b"]["failures"] == 1
    # The window slides: three minutes later only the newest bucket may remain.
    assert all(m.loads == 0 for m in activity.minutes(t + 64 + 180))
    with pytest.raises(ValueError, match="at least 1"):
        Activity(window_minutes=0)


def test_snapshot_lists_each_pods_models_most_recent_first_and_model_states() -> None:
    mesh = Records(
        models={m: ModelRecord(m, "onnx") for m in ("hot", "cold", "bad", "never")},
        vmodels={"alias": VModelRecord("alias", target="bad", previous="hot")},
        instances={"a": InstanceRecord("a", "a:1", 100, used=30, lru_time=50.0, draining=True)},
    )
    mesh.place("hot", "a", LOADED, size=20, last_used=90.0)
    mesh.place("cold", "a", LOADED, size=10, last_used=50.0)
    mesh.place("bad", "a", FAILED, error="no such file")
    view = snapshot(mesh, Activity(), None, now=100.0)
    (pod,) = view.pods
    assert [m.model_id for m in pod.models] == ["hot", "cold"]  # a failed copy holds nothing
    assert (pod.used, pod.capacity, pod.lru_time, pod.draining) == (30, 100, 50.0, True)
    states = {m.model_id: m.state for m in view.models}
    assert states == {"hot": "LOADED", "cold": "LOADED", "bad": "FAILED", "never": "NOT_LOADED"}
    assert next(m for m in view.models if m.model_id == "bad").last_failure == "a: no such file"
    (alias,) = view.vmodels
    assert (alias.active, alias.transition) == ("hot", "BLOCKED_BY_FAILED_LOAD")
    data = view.as_dict()
    assert data["pods"][0]["models"][0]["model_id"] == "hot"
