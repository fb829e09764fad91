"""Failed loads: remembered per (model, pod), capped in attempts, forgotten after the window."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mesh.cluster.records import PlacementRecord, PlacementState
from mesh.placement.failures import FailureLog, FailurePolicy


def test_a_failure_marks_its_pod_for_that_model_only() -> None:
    log = FailureLog()
    log.record("m", "pod-a", 100.0, "CUDA out of memory")
    failures = log.for_model("m", 101.0)
    assert failures is not None
    assert failures.pods == {"pod-a"}
    assert failures.attempts == 1
    assert not failures.exhausted
    assert log.for_model("other", 101.0) is None


def test_records_expire_after_fifteen_minutes_by_default() -> None:
    log = FailureLog()
    log.record("m", "pod-a", 100.0)
    assert log.for_model("m", 100.0 + 899.0) is not None
    assert log.for_model("m", 100.0 + 900.0) is None
    assert len(log) == 0


def test_attempts_are_capped_across_pods_within_the_window() -> None:
    log = FailureLog(FailurePolicy(ttl=600.0, max_attempts=3))
    log.record("m", "pod-a", 0.0, "e1")
    log.record("m", "pod-b", 100.0, "e2")
    assert not log.for_model("m", 150.0).exhausted  # type: ignore[union-attr]
    log.record("m", "pod-a", 200.0, "e3")  # the same pod again is another attempt
    failures = log.for_model("m", 250.0)
    assert failures is not None
    assert failures.exhausted
    assert failures.pods == {"pod-a", "pod-b"}
    assert failures.retry_at == 600.0  # when the first record expires
    assert failures.describe(250.0) == (
        "model 'm' failed to load 3 times (pod-a 250s ago: e1; pod-b 150s ago: e2; "
        "pod-a 50s ago: e3); at most 3 attempts within 600s, next attempt in 350s"
    )
    later = log.for_model("m", 600.0)
    assert later is not None and not later.exhausted and later.attempts == 2


def test_clear_forgets_a_model_that_loaded() -> None:
    log = FailureLog()
    log.record("m", "pod-a", 0.0)
    log.record("n", "pod-a", 0.0)
    log.clear("m")
    assert log.for_model("m", 1.0) is None
    assert log.for_model("n", 1.0) is not None


def test_expire_drops_everything_old_and_counts_it() -> None:
    log = FailureLog(FailurePolicy(ttl=10.0))
    for i in range(5):
        log.record(f"m{i}", "p", float(i))
    assert log.expire(13.0) == 4  # records at 0..3 are 10 s old or more
    assert len(log) == 1


def test_failed_placement_records_become_failures() -> None:
    log = FailureLog.from_records(
        [
            PlacementRecord("m", "pod-b", PlacementState.FAILED, since=50.0, error="bad file"),
            PlacementRecord("m", "pod-a", PlacementState.LOADED, since=10.0),
            PlacementRecord("m", "pod-c", PlacementState.FAILED, since=20.0, error="oom"),
        ]
    )
    failures = log.for_model("m", 60.0)
    assert failures is not None
    assert [(f.pod_id, f.error) for f in failures.failures] == [
        ("pod-c", "oom"),
        ("pod-b", "bad file"),
    ]


@given(
    st.lists(st.tuples(st.integers(0, 3000), st.sampled_from("abc")), max_size=20),
    st.integers(0, 4000),
)
def test_what_is_remembered_is_exactly_what_happened_within_the_window(
    events: list[tuple[int, str]], now: int
) -> None:
    policy = FailurePolicy(ttl=900.0, max_attempts=3)
    log = FailureLog(policy)
    for at, pod in events:  # out of order on purpose: a replayed mirror
        log.record("m", pod, float(at))
    recent = [(at, pod) for at, pod in events if now - 900 < at]
    failures = log.for_model("m", float(now))
    if not recent:
        assert failures is None
        return
    assert failures is not None
    assert failures.attempts == len(recent)
    assert failures.pods == {pod for _, pod in recent}
    assert failures.exhausted == (len(recent) >= 3)
    assert [f.at for f in failures.failures] == sorted(float(at) for at, _ in recent)


def test_failures_from_records_keep_the_policy_given() -> None:
    records = [PlacementRecord("m", "pod-a", PlacementState.FAILED, since=50.0, error="oom")]
    log = FailureLog.from_records(records, FailurePolicy(ttl=10.0, max_attempts=1))
    failures = log.for_model("m", 55.0)
    assert failures is not None and failures.exhausted  # one attempt is the cap here
    assert log.for_model("m", 61.0) is None  # and 10 s is the window


def test_a_pod_not_reached_is_passed_over_briefly_and_counts_no_attempt() -> None:
    log = FailureLog(FailurePolicy(ttl=900.0, max_attempts=2, unreachable_ttl=10.0))
    for at in (100.0, 101.0, 102.0):
        log.record("m", "pod-a", now=at, error="connection refused", unreachable=True)
    failures = log.for_model("m", now=105.0)
    assert failures is not None
    assert failures.unreachable == {"pod-a"} and failures.pods == frozenset()
    assert failures.attempts == 0 and not failures.exhausted
    log.record("m", "pod-b", now=106.0, error="bad weights")
    later = log.for_model("m", now=115.0)  # pod-a's records expired, pod-b's stands
    assert later is not None and later.unreachable == frozenset()
    assert later.pods == {"pod-b"} and later.attempts == 1
