"""What a draining pod's models need before it may go: copies elsewhere, most recently used first.

A pod that receives SIGTERM marks itself draining and waits (up to its hand-off timeout) until
each model it holds is loaded on another pod. The routers' leader asks `plan_handoff` which
models to load elsewhere, and in what order: the most recently used first, because those are
the ones clients are about to ask for; a model the pod last served an hour ago may as well be
loaded again on demand if the grace period runs out before its turn.

A model needs no hand-off when a live pod that is not draining holds or is loading a copy, or
when it is no longer registered.

>>> from mesh.placement.snapshot import HeldModel, ModelRequirements, PodView, Snapshot
>>> going = PodView("a", 1 << 30, draining=True, models={
...     "old": HeldModel("old", 1, 10.0, 0), "hot": HeldModel("hot", 1, 99.0, 0)})
>>> plan_handoff(Snapshot((going, PodView("b", 1 << 30)),
...     {"old": ModelRequirements("old"), "hot": ModelRequirements("hot")}))
['hot', 'old']
"""

from __future__ import annotations

from mesh.cluster.records import PlacementState
from mesh.placement.snapshot import Snapshot


def plan_handoff(snapshot: Snapshot) -> list[str]:
    """Registered models loaded on draining pods and held by no other live, non-draining pod,
    the most recently used (on any draining pod) first; ties by id, for a stable order."""
    last_used: dict[str, float] = {}
    for pod in snapshot.pods:
        if not pod.draining:
            continue
        for model in pod.models.values():
            if model.state is not PlacementState.LOADED or model.model_id not in snapshot.models:
                continue
            last_used[model.model_id] = max(last_used.get(model.model_id, 0.0), model.last_used)
    safe = {
        model_id
        for pod in snapshot.pods
        if pod.alive and not pod.draining
        for model_id in pod.models
    }
    todo = [m for m in last_used if m not in safe]
    return sorted(todo, key=lambda m: (-last_used[m], m))
