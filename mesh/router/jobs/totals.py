"""The leader's job: publish the cluster's totals (models, copies, pods, bytes), counted once."""

from __future__ import annotations

import time

from mesh.cluster.mirror import Mirror
from mesh.cluster.records import PlacementState
from mesh.router.metrics import RouterMetrics


def publish_totals(mirror: Mirror, m: RouterMetrics) -> None:
    loaded = [
        model_id
        for model_id, copies in mirror.placements.items()
        if any(p.state is PlacementState.LOADED for p in copies.values())
    ]
    m.models_registered.set(len(mirror.models))
    m.models_loaded.set(len(loaded))
    m.copies.set(
        sum(
            1
            for copies in mirror.placements.values()
            for p in copies.values()
            if p.state is PlacementState.LOADED
        )
    )
    m.pods.set(len(mirror.instances))
    m.capacity.set(sum(i.capacity for i in mirror.instances.values()))
    m.used.set(sum(i.used for i in mirror.instances.values()))
    oldest = min((i.lru_time for i in mirror.instances.values() if i.lru_time > 0), default=0)
    m.lru_age.set(max(time.time() - oldest, 0.0) if oldest else 0.0)
    m.models_failed.set(
        sum(
            1
            for copies in mirror.placements.values()
            if any(p.state is PlacementState.FAILED for p in copies.values())
        )
    )
