"""Snapshots built from the cluster records, as the router's mirror holds them."""

from __future__ import annotations

import dataclasses
import doctest
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mesh.placement.choose
import mesh.placement.copies
import mesh.placement.eviction
import mesh.placement.failures
import mesh.placement.handoff
import mesh.placement.snapshot
from mesh.cluster.records import InstanceRecord, ModelRecord, PlacementRecord, PlacementState
from mesh.placement.choose import Placement, choose_pod
from mesh.placement.snapshot import DEFAULT_SIZE, HeldModel, ModelRequirements, Snapshot

GB = 1 << 30


def records() -> tuple[list[InstanceRecord], list[PlacementRecord], list[ModelRecord]]:
    instances = [
        InstanceRecord(
            "pod-b",
            "10.0.0.2:8085",
            capacity=16 * GB,
            used=4 * GB,
            lru_time=120.0,
            loading_count=0,
            in_flight=3,
            runtimes=("onnx", "xgboost"),
            labels={"zone": "a"},
        ),
        InstanceRecord("pod-a", "10.0.0.1:8085", capacity=8 * GB, draining=True),
    ]
    placements = [
        PlacementRecord(
            "resnet", "pod-b", PlacementState.LOADED, since=100.0, size=3 * GB, last_used=150.0
        ),
        PlacementRecord("bert", "pod-b", PlacementState.LOADING, since=160.0),
        PlacementRecord("broken", "pod-b", PlacementState.FAILED, since=170.0, error="bad"),
        PlacementRecord("resnet", "pod-gone", PlacementState.LOADED, since=1.0, size=GB),
        PlacementRecord("tree", "pod-a", PlacementState.LOADED, since=90.0, size=GB),
    ]
    models = [
        ModelRecord("resnet", "onnx", size_estimate=2 * GB),
        ModelRecord(
            "bert",
            "pytorch",
            size_estimate=2 * GB,
            required_labels={"gpu": "1"},
            pinned_pods=("pod-b",),
            min_copies=1,
            max_copies=3,
        ),
        ModelRecord("tree", "xgboost"),
    ]
    return instances, placements, models


def test_from_records_gives_each_pod_its_copies_room_and_age() -> None:
    snap = Snapshot.from_records(*records(), runtime_of={"pytorch": "torch"}, dead=["pod-a"])
    assert [p.pod_id for p in snap.pods] == ["pod-a", "pod-b"]  # sorted: decisions repeat
    b = snap.pod("pod-b")
    assert b is not None
    assert b.models == {
        "resnet": HeldModel("resnet", 3 * GB, 150.0, 0, PlacementState.LOADED),
        # A load in progress is charged its model's estimate until it reports a size.
        "bert": HeldModel("bert", 2 * GB, 160.0, 0, PlacementState.LOADING),
    }
    # The instance record says 4 GB and no loads; the placements, newer, say 5 GB and one.
    assert b.used == 5 * GB
    assert b.loading_count == 1
    assert b.lru_time == 120.0
    assert b.in_flight == 3
    assert b.runtimes == {"onnx", "xgboost"}
    assert b.labels == {"zone": "a"}
    assert b.alive and not b.draining
    a = snap.pod("pod-a")
    assert a is not None
    assert not a.alive and a.draining
    # No lru_time published: the oldest loaded copy's last use (its load, here) stands in.
    assert a.lru_time == 90.0
    assert [p.pod_id for p in snap.holders("resnet")] == ["pod-b"]  # pod-gone has no lease
    assert snap.holders("broken") == ()
    assert snap.pod("pod-gone") is None


def test_requirements_come_from_the_model_records() -> None:
    snap = Snapshot.from_records(*records(), runtime_of={"pytorch": "torch"})
    assert snap.requirements("bert") == ModelRequirements(
        "bert",
        runtime="torch",
        size=2 * GB,
        required_labels={"gpu": "1"},
        pinned_pods=("pod-b",),
        min_copies=1,
        max_copies=3,
    )
    tree = snap.requirements("tree")
    assert tree is not None
    assert tree.runtime == "xgboost"
    assert tree.size == DEFAULT_SIZE
    assert snap.requirements("nope") is None


def test_a_snapshot_from_records_drives_a_decision() -> None:
    snap = Snapshot.from_records(*records())
    req = snap.requirements("tree")
    assert req is not None
    # pod-a is draining: the tree goes to pod-b, which has room.
    assert choose_pod(snap, req, 200.0, random.Random(0)) == Placement("pod-b", 0, ())


@pytest.mark.parametrize(
    "module",
    [
        mesh.placement.snapshot,
        mesh.placement.choose,
        mesh.placement.eviction,
        mesh.placement.copies,
        mesh.placement.failures,
        mesh.placement.handoff,
    ],
)
def test_the_usage_examples_in_the_docstrings_hold(module: object) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)  # type: ignore[arg-type]
    assert result.failed == 0


def test_a_model_never_loaded_is_estimated_by_its_formats_measured_sizes() -> None:
    from mesh.cluster.records import InstanceRecord, ModelRecord
    from mesh.placement.snapshot import DEFAULT_SIZE, Snapshot

    models = [
        ModelRecord("a", "xgboost", measured_size=6 << 20),
        ModelRecord("b", "xgboost", measured_size=5 << 20),
        ModelRecord("c", "xgboost", measured_size=7 << 20),
        ModelRecord("new", "xgboost"),
        ModelRecord("given", "xgboost", size_estimate=1 << 30),
        ModelRecord("other", "onnx"),
    ]
    snap = Snapshot.from_records([InstanceRecord("p", "p:1", 1 << 30)], [], models)
    sizes = {m: r.size for m, r in snap.models.items()}
    assert sizes["new"] == 6 << 20  # the median of its format's measurements
    assert sizes["a"] == 6 << 20 and sizes["b"] == 5 << 20  # each its own measurement
    assert sizes["given"] == 1 << 30  # an estimate given at registration wins
    assert sizes["other"] == DEFAULT_SIZE  # nothing of its format measured yet


def test_a_pod_is_charged_the_size_measured_on_its_kind_of_device() -> None:
    # Measured at 4 MiB in host memory and 48 MiB on a GPU (a CUDA context, an arena): a GPU
    # pod with 16 MiB free cannot take it without evicting, a CPU pod with as much can.
    model = ModelRecord(
        "m", "torch", measured_size=4 << 20,
        measured_sizes={"torch/host": 4 << 20, "torch/cuda": 48 << 20, "onnx/cuda": 1},
    )  # fmt: skip
    pods = [
        InstanceRecord("gpu", "g:1", 64 << 20, used=48 << 20, runtimes=("torch",),
                       device="cuda:0"),
        InstanceRecord("cpu", "c:1", 64 << 20, used=48 << 20, runtimes=("torch",),
                       device="host"),
    ]  # fmt: skip
    snap = Snapshot.from_records(pods, [], [model])
    req = snap.requirements("m")
    assert req is not None
    gpu, cpu = snap.pod("gpu"), snap.pod("cpu")
    assert gpu is not None and cpu is not None
    assert (req.size_on(gpu), req.size_on(cpu)) == (48 << 20, 4 << 20)  # its runtime's, by tier
    assert choose_pod(snap, req, 10.0, random.Random(0)) == Placement("cpu", 0, ())
    # Too big for the GPU pod at all: refused there, never planned as an eviction.
    small = Snapshot.from_records(
        [dataclasses.replace(pods[0], capacity=32 << 20, used=0)], [], [model]
    )
    decision = choose_pod(small, req, 10.0, random.Random(0))
    assert not isinstance(decision, Placement) and "less capacity" in decision.reason
    # A size given at registration wins over every measurement.
    given = dataclasses.replace(model, size_estimate=8 << 20)
    req = Snapshot.from_records(pods, [], [given]).requirements("m")
    assert req is not None and req.size_on(gpu) == 8 << 20


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", "d", "e"]),
            st.sampled_from(["onnx", "xgboost", None]),  # None: unregistered
            st.integers(0, 5),
        ),
        max_size=40,
    )
)
def test_typical_sizes_kept_change_by_change_equal_those_computed_afresh(
    changes: list[tuple[str, str | None, int]],
) -> None:
    """The router keeps the per-format estimates from the mirror's changes; after any sequence
    of registrations, size updates, format changes and unregistrations they are what a full
    recomputation over the records gives."""
    from mesh.placement.snapshot import TypicalSizes, typical_sizes

    records: dict[str, ModelRecord] = {}
    kept = TypicalSizes()
    for model_id, fmt, size in changes:
        previous = records.get(model_id)
        record = None if fmt is None else ModelRecord(model_id, fmt, measured_size=size * 10)
        if record is None:
            records.pop(model_id, None)
        else:
            records[model_id] = record
        kept.update(previous, record)
        assert kept.sizes() == typical_sizes(records.values())


def _pod(pod_id: str, **factors: float) -> InstanceRecord:
    return InstanceRecord(pod_id, "10.0.0.9:8085", capacity=GB, size_factors=factors)


def test_a_model_never_measured_is_estimated_from_its_files_times_the_median_factor() -> None:
    pods = [_pod("a", onnx=2.0), _pod("b", onnx=3.0, torch=1.1), _pod("c", onnx=40.0), _pod("d")]
    measured = ModelRecord("seen", "onnx", measured_size=5_000)
    fresh = ModelRecord("fresh", "onnx", artifact_bytes=1_000)
    snap = Snapshot.from_records(pods, [], [measured, fresh])
    fresh_size = snap.requirements("fresh")
    assert fresh_size is not None and fresh_size.size == 3_000  # the median, not the outlier


def test_the_size_of_a_model_comes_given_then_measured_then_estimated_then_typical() -> None:
    pods = [_pod("a", onnx=2.0)]
    others = [ModelRecord(f"o{i}", "onnx", measured_size=700) for i in range(3)]
    models = [
        ModelRecord("given", "onnx", size_estimate=9, measured_size=8, artifact_bytes=100),
        ModelRecord("measured", "onnx", measured_size=8, artifact_bytes=100),
        ModelRecord("files", "onnx", artifact_bytes=100),
        ModelRecord("typical", "onnx"),
        ModelRecord("other-format", "torch", artifact_bytes=100),  # no pod learned torch
    ]
    snap = Snapshot.from_records(pods, [], [*others, *models])
    sizes = {m.model_id: snap.requirements(m.model_id).size for m in models}  # type: ignore[union-attr]
    assert sizes == {
        "given": 9, "measured": 8, "files": 200, "typical": 700, "other-format": DEFAULT_SIZE,
    }  # fmt: skip


def test_a_loading_copy_of_a_model_never_measured_is_charged_the_estimate() -> None:
    pods = [_pod("a", xgboost=4.0)]
    loading = PlacementRecord("m", "a", PlacementState.LOADING, since=1.0)
    snap = Snapshot.from_records(pods, [loading], [ModelRecord("m", "xgboost", artifact_bytes=10)])
    assert snap.pods[0].used == 40
