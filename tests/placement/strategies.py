"""Hypothesis strategies for placement: small clusters where every rule has something to do."""

from __future__ import annotations

from hypothesis import strategies as st

from mesh.cluster.records import PlacementState
from mesh.placement.failures import FailureLog, FailurePolicy, ModelFailures
from mesh.placement.snapshot import HeldModel, ModelRequirements, PodView, Snapshot

NOW = 1000.0
MODEL_IDS = [f"m{i}" for i in range(8)]
RUNTIMES = ("onnx", "xgboost")


@st.composite
def held_models(draw: st.DrawFn) -> dict[str, HeldModel]:
    ids = draw(st.lists(st.sampled_from(MODEL_IDS), unique=True, max_size=6))
    models = {}
    for model_id in ids:
        models[model_id] = HeldModel(
            model_id,
            size=draw(st.integers(1, 300)),
            last_used=float(draw(st.integers(900, 1000))),
            in_flight=draw(st.sampled_from([0, 0, 0, 1, 3])),
            state=draw(st.sampled_from([PlacementState.LOADED] * 3 + [PlacementState.LOADING])),
        )
    return models


@st.composite
def pod_views(draw: st.DrawFn, pod_id: str) -> PodView:
    models = draw(held_models())
    held = sum(m.size for m in models.values())
    loaded = [m.last_used for m in models.values() if m.state is PlacementState.LOADED]
    return PodView(
        pod_id=pod_id,
        capacity=draw(st.integers(50, 800)),
        # Usually what the models take; sometimes more (a load measured above its estimate).
        used=held + draw(st.sampled_from([0, 0, 0, 20, 200])),
        lru_time=min(loaded, default=0.0),
        loading_count=sum(m.state is PlacementState.LOADING for m in models.values())
        + draw(st.integers(0, 2)),
        in_flight=draw(st.integers(0, 4)),
        draining=draw(st.sampled_from([False] * 5 + [True])),
        alive=draw(st.sampled_from([True] * 5 + [False])),
        runtimes=frozenset(draw(st.sets(st.sampled_from(RUNTIMES), min_size=1))),
        labels=draw(st.sampled_from([{}, {"zone": "a"}, {"zone": "b"}, {"zone": "a", "gpu": "1"}])),
        models=models,
        # Models in the pod's host tier (a model is never both loaded and demoted on a pod,
        # but records lag, so a view may say both: placement must cope).
        host_models=frozenset(draw(st.sets(st.sampled_from([*MODEL_IDS, "new"]), max_size=3))),
    )


@st.composite
def snapshots(draw: st.DrawFn, max_pods: int = 8) -> Snapshot:
    n = draw(st.integers(0, max_pods))
    return Snapshot(tuple(draw(pod_views(f"p{i}")) for i in range(n)))


@st.composite
def requirements(draw: st.DrawFn, pod_ids: list[str]) -> ModelRequirements:
    pinned = draw(st.sampled_from([(), (), (), tuple(pod_ids[:2]), ("p0", "gone")]))
    return ModelRequirements(
        model_id=draw(st.sampled_from([*MODEL_IDS, "new", "new"])),
        runtime=draw(st.sampled_from(["", "onnx", "xgboost"])),
        size=draw(st.integers(1, 400)),
        required_labels=draw(st.sampled_from([{}, {}, {"zone": "a"}])),
        pinned_pods=pinned,
    )


@st.composite
def failures_for(draw: st.DrawFn, model_id: str, pod_ids: list[str]) -> ModelFailures | None:
    if not pod_ids or draw(st.booleans()):
        return None
    log = FailureLog(FailurePolicy(ttl=900.0, max_attempts=3))
    for pod_id in draw(st.lists(st.sampled_from(pod_ids), max_size=3)):
        log.record(model_id, pod_id, NOW - draw(st.integers(0, 1200)), "boom")
    return log.for_model(model_id, NOW)
