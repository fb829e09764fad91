"""choose_pod: where a cache miss goes, and why nowhere when it cannot go anywhere."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.cluster.records import PlacementState
from mesh.placement.choose import (
    NoPod,
    Placement,
    PlacementPolicy,
    Rejection,
    choose_pod,
    eligible_pods,
    rejection,
)
from mesh.placement.eviction import CannotFit, plan_eviction
from mesh.placement.failures import FailureLog, FailurePolicy, ModelFailures
from mesh.placement.snapshot import HeldModel, ModelRequirements, PodView, Snapshot
from tests.placement.strategies import NOW, failures_for, requirements, snapshots

LOADED = PlacementState.LOADED
LOADING = PlacementState.LOADING


def pod(
    pod_id: str,
    capacity: int = 100,
    models: list[HeldModel] | None = None,
    extra_used: int = 0,
    **kw: object,
) -> PodView:
    held = {m.model_id: m for m in models or []}
    loaded = [m.last_used for m in held.values() if m.state is LOADED]
    return PodView(
        pod_id,
        capacity,
        used=sum(m.size for m in held.values()) + extra_used,
        lru_time=min(loaded, default=0.0),
        runtimes=kw.pop("runtimes", frozenset({"onnx"})),  # type: ignore[arg-type]
        models=held,
        **kw,  # type: ignore[arg-type]
    )


def model(size: int = 40, model_id: str = "new", **kw: object) -> ModelRequirements:
    return ModelRequirements(model_id, runtime=kw.pop("runtime", "onnx"), size=size, **kw)  # type: ignore[arg-type]


def held(model_id: str, size: int, last_used: float, in_flight: int = 0) -> HeldModel:
    return HeldModel(model_id, size, last_used, in_flight, LOADED)


def decide(
    snapshot: Snapshot, req: ModelRequirements, seed: int = 0, **kw: object
) -> Placement | NoPod:
    return choose_pod(snapshot, req, NOW, random.Random(seed), **kw)  # type: ignore[arg-type]


# -- the rules, one at a time ------------------------------------------------------------------


def test_prefers_free_room_over_evicting_an_old_model() -> None:
    snap = Snapshot(
        (
            pod("old-but-full", models=[held("a", 100, 10.0)]),
            pod("young-with-room", models=[held("b", 50, 990.0)]),
        )
    )
    decision = decide(snap, model(40))
    assert decision == Placement("young-with-room", 0, ())
    assert not decision.evicts


def test_when_all_are_full_the_pod_with_the_oldest_lru_model_takes_it() -> None:
    snap = Snapshot(
        (
            pod("p1", models=[held("a", 60, 500.0), held("b", 40, 800.0)]),
            pod("p2", models=[held("c", 60, 100.0), held("d", 40, 900.0)]),
            pod("p3", models=[held("e", 100, 700.0)]),
        )
    )
    decision = decide(snap, model(40))
    assert decision == Placement("p2", 40, ("c",))
    assert decision.evicts


def test_global_lru_skips_a_pod_whose_old_models_cannot_go() -> None:
    # p-busy has the oldest model, but it is in flight; p-guarded's was used within the guard.
    snap = Snapshot(
        (
            pod("p-busy", models=[held("a", 100, 10.0, in_flight=2)]),
            pod("p-guarded", models=[held("b", 100, 995.0)]),
            pod("p-ok", models=[held("c", 100, 600.0)]),
        )
    )
    decision = decide(snap, model(40), policy=PlacementPolicy(min_age=30.0))
    assert decision == Placement("p-ok", 40, ("c",))


def test_nothing_evictable_anywhere_says_so_with_numbers_of_pods() -> None:
    snap = Snapshot(
        (
            pod("p1", models=[held("a", 100, 10.0, in_flight=1)]),
            pod("p2", models=[HeldModel("b", 100, 0.0, 0, LOADING)]),
        )
    )
    decision = decide(snap, model(40))
    assert isinstance(decision, NoPod)
    assert "2 are full with nothing evictable" in decision.reason
    assert "(p1, p2)" in decision.reason
    assert [r.why for r in decision.rejected] == [Rejection.NO_ROOM]


def test_among_pods_with_room_the_least_busy_is_chosen() -> None:
    snap = Snapshot(
        (
            pod("loading", loading_count=2),
            pod("serving", in_flight=7),
            pod("quiet", in_flight=1),
        )
    )
    for seed in range(20):
        assert decide(snap, model(), seed=seed).pod_id == "quiet"  # type: ignore[union-attr]


def test_equally_old_full_pods_go_by_busyness() -> None:
    # Within lru_slack of each other: the one not loading wins although its model is younger.
    snap = Snapshot(
        (
            pod("oldest-but-loading", models=[held("a", 100, 500.0)], loading_count=3),
            pod("idle", models=[held("b", 100, 503.0)]),
            pod("much-younger", models=[held("c", 100, 900.0)]),
        )
    )
    assert decide(snap, model(), policy=PlacementPolicy(lru_slack=5.0)).pod_id == "idle"  # type: ignore[union-attr]
    assert decide(snap, model(), policy=PlacementPolicy(lru_slack=0.0)).pod_id == (  # type: ignore[union-attr]
        "oldest-but-loading"
    )


def test_ties_are_broken_by_the_seed_and_spread_over_the_tied_pods() -> None:
    snap = Snapshot(tuple(pod(f"p{i}") for i in range(4)))
    picks = Counter(decide(snap, model(), seed=s).pod_id for s in range(200))  # type: ignore[union-attr]
    assert set(picks) == {"p0", "p1", "p2", "p3"}
    assert min(picks.values()) > 20
    assert decide(snap, model(), seed=7) == decide(snap, model(), seed=7)


def test_runtime_labels_and_pinning_restrict_the_choice() -> None:
    snap = Snapshot(
        (
            pod("onnx-a", labels={"zone": "a"}),
            pod("onnx-b", labels={"zone": "b"}),
            pod("xgb-a", labels={"zone": "a"}, runtimes=frozenset({"xgboost"})),
        )
    )
    assert decide(snap, model(runtime="xgboost")).pod_id == "xgb-a"  # type: ignore[union-attr]
    assert decide(snap, model(required_labels={"zone": "b"})).pod_id == "onnx-b"  # type: ignore[union-attr]
    # Pinned to a full pod: it evicts there rather than use the free pods.
    full = Snapshot((*snap.pods, pod("pinned", models=[held("old", 100, 1.0)])))
    decision = decide(full, model(pinned_pods=("pinned",)))
    assert decision == Placement("pinned", 40, ("old",))
    no = decide(snap, model(runtime="torch"))
    assert isinstance(no, NoPod)
    assert "3 lack its runtime" in no.reason
    assert "runtime torch" in no.reason
    no = decide(snap, model(runtime="xgboost", required_labels={"zone": "b"}))
    assert isinstance(no, NoPod)
    assert "2 lack its runtime (onnx-a, onnx-b); 1 lack its labels (xgb-a)" in no.reason


def test_pinned_pods_missing_from_the_cluster_are_named_in_the_reason() -> None:
    snap = Snapshot((pod("p1", draining=True), pod("other")))
    no = decide(snap, model(pinned_pods=("p1", "gone")))
    assert isinstance(no, NoPod)
    assert "of 1 pods in the pinned pods ['p1', 'gone']" in no.reason
    assert "1 draining (p1)" in no.reason
    assert "1 of its pinned pods are not in the cluster" in no.reason


def test_draining_dead_excluded_failed_holding_and_small_pods_are_never_chosen() -> None:
    snap = Snapshot(
        (
            pod("draining", draining=True),
            pod("dead", alive=False),
            pod("tried", capacity=1000),
            pod("failed"),
            pod("holder", models=[held("new", 10, 999.0)]),
            pod("tiny", capacity=10),
            pod("good", extra_used=30),
        )
    )
    log = FailureLog()
    log.record("new", "failed", NOW - 10, "out of memory")
    failures = log.for_model("new", NOW)
    excluded = ["tried"]
    assert decide(snap, model(), exclude=excluded, failures=failures) == Placement("good", 0, ())
    no = decide(Snapshot(snap.pods[:-1]), model(), exclude=excluded, failures=failures)
    assert isinstance(no, NoPod)
    assert no.reason == (
        "no pod can take model 'new' (40 bytes, runtime onnx): of 6 pods in the cluster, "
        "1 dead (dead); 1 draining (draining); 1 excluded by the caller (tried); "
        "1 failed to load it recently (failed); 1 already hold it (holder); "
        "1 have less capacity than its size (tiny)"
    )


def test_good_pod_is_not_chosen_because_of_eviction_when_only_loading_copies_fill_it() -> None:
    # 'good' must free 30 bytes; its only loaded model is in flight, the rest is loading.
    p = pod(
        "good",
        models=[held("busy", 40, 1.0, in_flight=1), HeldModel("l", 60, 1.0, 0, LOADING)],
    )
    plan = plan_eviction(p, 30, NOW, 0.0)
    assert isinstance(plan, CannotFit)
    assert plan.loading == 1
    assert plan.in_flight == 1
    assert isinstance(decide(Snapshot((p,)), model(30)), NoPod)


def test_too_many_failures_stop_placement_until_they_expire() -> None:
    snap = Snapshot(tuple(pod(f"p{i}") for i in range(5)))
    log = FailureLog(FailurePolicy(ttl=900.0, max_attempts=3))
    for i, at in enumerate((100.0, 200.0, 300.0)):
        log.record("new", f"p{i}", at, f"error {i}")
    failures = log.for_model("new", 400.0)
    no = choose_pod(snap, model(), 400.0, random.Random(0), failures=failures)
    assert isinstance(no, NoPod)
    assert "failed to load 3 times" in no.reason
    assert "p0 300s ago: error 0" in no.reason
    assert "next attempt in 600s" in no.reason
    later = log.for_model("new", 1000.0)  # the first record has expired: one more attempt
    decision = choose_pod(snap, model(), 1000.0, random.Random(0), failures=later)
    assert isinstance(decision, Placement)
    assert decision.pod_id in {"p0", "p3", "p4"}


def test_sampling_still_finds_the_one_pod_that_can_take_the_model() -> None:
    pods = [pod(f"p{i}", runtimes=frozenset({"xgboost"})) for i in range(60)]
    pods[37] = pod("p37")
    snap = Snapshot(tuple(pods))
    for seed in range(10):
        assert decide(snap, model(), seed=seed, sample=4).pod_id == "p37"  # type: ignore[union-attr]


def test_sampling_picks_an_old_pod_not_necessarily_the_oldest() -> None:
    pods = tuple(pod(f"p{i}", models=[held(f"m{i}", 100, float(i))]) for i in range(200))
    snap = Snapshot(pods)
    exact = PlacementPolicy(lru_slack=0.0)
    assert decide(snap, model(), policy=exact).pod_id == "p0"  # type: ignore[union-attr]
    picks = [
        int(decide(snap, model(), seed=s, sample=16, policy=exact).pod_id[1:])  # type: ignore[union-attr]
        for s in range(50)
    ]
    # The oldest of 16 random pods out of 200: its rank is about 200/17 on average.
    assert sum(picks) / len(picks) < 30
    assert len(set(picks)) > 5


def test_eligible_pods_counts_where_a_copy_could_ever_go() -> None:
    snap = Snapshot(
        (
            pod("a", models=[held("m", 10, 1.0)]),
            pod("b"),
            pod("c", draining=True),
            pod("d", runtimes=frozenset({"torch"})),
            pod("e", capacity=5),
        )
    )
    assert eligible_pods(snap, model(20, model_id="m")) == 2
    assert eligible_pods(snap, model(20, model_id="m", pinned_pods=("b", "c"))) == 1


# -- properties --------------------------------------------------------------------------------


@st.composite
def cases(
    draw: st.DrawFn,
) -> tuple[Snapshot, ModelRequirements, list[str], ModelFailures | None, PlacementPolicy]:
    snap = draw(snapshots())
    ids = [p.pod_id for p in snap.pods]
    req = draw(requirements(ids))
    exclude = draw(st.lists(st.sampled_from(ids), max_size=2)) if ids else []
    failures = draw(failures_for(req.model_id, ids))
    policy = PlacementPolicy(min_age=draw(st.sampled_from([0.0, 30.0])), lru_slack=5.0)
    return snap, req, exclude, failures, policy


def can_take(
    p: PodView,
    req: ModelRequirements,
    exclude: list[str],
    failures: ModelFailures | None,
    policy: PlacementPolicy,
) -> bool:
    if req.pinned_pods and p.pod_id not in req.pinned_pods:
        return False
    failed = failures.pods if failures is not None else frozenset()
    if rejection(p, req, exclude, failed) is not None:
        return False
    return not isinstance(plan_eviction(p, req.size, NOW, policy.min_age), CannotFit)


def check_safe(
    snap: Snapshot,
    req: ModelRequirements,
    exclude: list[str],
    failures: ModelFailures | None,
    policy: PlacementPolicy,
    decision: Placement | NoPod,
) -> None:
    if isinstance(decision, NoPod):
        assert decision.reason
        return
    assert failures is None or not failures.exhausted
    chosen = snap.pod(decision.pod_id)
    assert chosen is not None
    assert chosen.alive and not chosen.draining
    assert chosen.pod_id not in exclude
    assert failures is None or chosen.pod_id not in failures.pods
    assert not chosen.holds(req.model_id)
    assert not req.runtime or req.runtime in chosen.runtimes
    assert all(chosen.labels.get(k) == v for k, v in req.required_labels.items())
    assert not req.pinned_pods or chosen.pod_id in req.pinned_pods
    victims = [chosen.models[v] for v in decision.victims]
    freed = sum(v.size for v in victims)
    # The capacity is never exceeded once the victims are gone.
    assert chosen.used - freed + req.size <= chosen.capacity
    assert decision.evicts == bool(victims)
    assert len(set(decision.victims)) == len(victims)
    for v in victims:
        assert v.state is LOADED
        assert v.in_flight == 0
        assert NOW - v.last_used >= policy.min_age
        assert chosen.used - (freed - v.size) + req.size > chosen.capacity  # none to spare
    warm = [p for p in snap.warm(req.model_id) if can_take(p, req, exclude, failures, policy)]
    # A pod holding the model in its host tier takes it whenever one can.
    assert not warm or chosen.pod_id in {p.pod_id for p in warm}
    if victims:
        # Evicting only when no eligible pod has free room, and only an old enough pod (among
        # the pods with the model in their host tier, when one of them takes it).
        pool = warm or snap.pods
        takers = [p for p in pool if can_take(p, req, exclude, failures, policy)]
        assert all(p.free < req.size for p in takers)
        assert chosen.lru_time <= min(p.lru_time for p in takers) + policy.lru_slack


@settings(deadline=None)  # a loaded machine is no counterexample
@given(cases(), st.integers(0, 3))
def test_placements_are_safe_complete_and_deterministic(
    case: tuple[Snapshot, ModelRequirements, list[str], ModelFailures | None, PlacementPolicy],
    seed: int,
) -> None:
    snap, req, exclude, failures, policy = case
    decision = choose_pod(
        snap, req, NOW, random.Random(seed), exclude=exclude, failures=failures, policy=policy
    )
    check_safe(snap, req, exclude, failures, policy, decision)
    exhausted = failures is not None and failures.exhausted
    takers = [p for p in snap.pods if can_take(p, req, exclude, failures, policy)]
    # Complete: "no pod" only when no pod could take the model.
    assert isinstance(decision, NoPod) == (exhausted or not takers)
    # Deterministic: the same snapshot (even rebuilt) and seed give the same answer.
    again = choose_pod(
        Snapshot(tuple(snap.pods)),
        req,
        NOW,
        random.Random(seed),
        exclude=list(exclude),
        failures=failures,
        policy=policy,
    )
    assert again == decision


@given(cases(), st.integers(0, 3), st.integers(1, 4))
def test_sampled_decisions_are_as_safe_and_as_complete(
    case: tuple[Snapshot, ModelRequirements, list[str], ModelFailures | None, PlacementPolicy],
    seed: int,
    sample: int,
) -> None:
    snap, req, exclude, failures, policy = case
    kw = {"exclude": exclude, "failures": failures, "policy": policy, "sample": sample}
    decision = choose_pod(snap, req, NOW, random.Random(seed), **kw)  # type: ignore[arg-type]
    full = choose_pod(
        snap, req, NOW, random.Random(seed), exclude=exclude, failures=failures, policy=policy
    )
    assert isinstance(decision, NoPod) == isinstance(full, NoPod)
    if isinstance(decision, Placement):
        chosen = snap.pod(decision.pod_id)
        assert chosen is not None
        assert (
            chosen.used - sum(chosen.models[v].size for v in decision.victims) + req.size
            <= chosen.capacity
        )
        assert chosen.alive and not chosen.draining and chosen.pod_id not in exclude
    assert decision == choose_pod(snap, req, NOW, random.Random(seed), **kw)  # type: ignore[arg-type]


GPU = {"gpu": "true"}


def test_a_preferred_pod_with_room_comes_first() -> None:
    cpu = pod("cpu", extra_used=0)  # emptier, and less busy
    gpu = pod("gpu", extra_used=50, labels=GPU, in_flight=9)
    for seed in range(10):
        decision = decide(Snapshot((cpu, gpu)), model(preferred_labels=GPU), seed)
        assert isinstance(decision, Placement) and decision.pod_id == "gpu"


def test_a_preference_never_costs_an_eviction_a_pod_with_room_would_spare() -> None:
    cpu = pod("cpu")  # room
    gpu = pod("gpu", models=[held("old", 90, 1.0)], labels=GPU)  # full: would evict "old"
    decision = decide(Snapshot((cpu, gpu)), model(preferred_labels=GPU))
    assert isinstance(decision, Placement) and decision.pod_id == "cpu" and not decision.victims


def test_when_every_pod_is_full_the_preferred_one_evicts() -> None:
    cpu = pod("cpu", models=[held("older", 90, 1.0)])  # the older LRU: plain LRU picks it
    gpu = pod("gpu", models=[held("old", 90, 5.0)], labels=GPU)
    plain = decide(Snapshot((cpu, gpu)), model(), 0, policy=PlacementPolicy(lru_slack=0))
    assert isinstance(plain, Placement) and plain.pod_id == "cpu"
    preferring = decide(Snapshot((cpu, gpu)), model(preferred_labels=GPU), 0,
                        policy=PlacementPolicy(lru_slack=0))  # fmt: skip
    assert isinstance(preferring, Placement) and preferring.pod_id == "gpu"
    assert preferring.victims == ("old",)


def test_a_preference_no_pod_can_meet_is_no_constraint() -> None:
    decision = decide(Snapshot((pod("a"), pod("b"))), model(preferred_labels=GPU))
    assert isinstance(decision, Placement)
    gone = decide(Snapshot((pod("gpu", labels=GPU, draining=True), pod("cpu"))),
                  model(preferred_labels=GPU))  # fmt: skip
    assert isinstance(gone, Placement) and gone.pod_id == "cpu"


# -- the host tier -----------------------------------------------------------------------------


def test_a_pod_with_the_model_in_its_host_tier_takes_the_miss_even_over_free_room() -> None:
    warm_full = pod("warm", models=[held("young", 90, 999.0)], host_models=frozenset({"new"}))
    roomy = pod("roomy")
    decision = decide(Snapshot((roomy, warm_full)), model(40))
    # An eviction on the warm pod (it promotes from host memory) beats a pull onto free room.
    assert decision == Placement("warm", 30, ("young",))


def test_a_warm_pod_that_cannot_take_the_model_leaves_the_choice_to_the_other_rules() -> None:
    busy = pod(
        "warm", models=[held("busy", 90, 900.0, in_flight=2)], host_models=frozenset({"new"})
    )
    draining = pod("drain", draining=True, host_models=frozenset({"new"}))
    other = pod("other", models=[held("old", 90, 950.0)])
    assert decide(Snapshot((busy, draining, other)), model(40)) == Placement("other", 30, ("old",))
    nowhere = decide(Snapshot((busy, draining, other)), model(40), exclude=["other"])
    assert isinstance(nowhere, NoPod)
    assert "1 draining (drain)" in nowhere.reason
    assert "1 are full with nothing evictable" in nowhere.reason


def test_warm_pods_respect_pinning_and_records_carry_the_host_tier() -> None:
    from mesh.cluster.records import InstanceRecord

    warm = PodView.from_records(
        InstanceRecord(
            "warm", "a:1", capacity=100, runtimes=("onnx",), loading_count=1, host_models=("new",)
        ),
        [],
    )
    assert warm.host_models == frozenset({"new"})
    roomy = pod("roomy")
    snap = Snapshot((roomy, warm))
    assert snap.warm("new") == (warm,)
    # Busier than the other pod with room, and chosen all the same.
    assert decide(snap, model(40)) == Placement("warm", 0, ())
    assert decide(snap, model(40, pinned_pods=("roomy",))) == Placement("roomy", 0, ())


@settings(deadline=None)  # a loaded machine is no counterexample
@given(cases(), st.integers(0, 3))
def test_a_warm_pod_that_can_take_the_model_always_gets_it(
    case: tuple[Snapshot, ModelRequirements, list[str], ModelFailures | None, PlacementPolicy],
    seed: int,
) -> None:
    snap, req, exclude, failures, policy = case
    kw = {"exclude": exclude, "failures": failures, "policy": policy}
    for sample in (None, 2):
        decision = choose_pod(snap, req, NOW, random.Random(seed), sample=sample, **kw)  # type: ignore[arg-type]
        warm = {
            p.pod_id for p in snap.warm(req.model_id) if can_take(p, req, exclude, failures, policy)
        }
        if warm and not (failures is not None and failures.exhausted):
            assert isinstance(decision, Placement) and decision.pod_id in warm


def test_eligible_pods_bounds_copies_by_the_pinned_pods() -> None:
    snap = Snapshot((pod("a"), pod("b"), pod("c", models=[held("new", 40, 1.0)])))
    assert eligible_pods(snap, model()) == 3  # a holder counts as a place for a copy
    assert eligible_pods(snap, model(pinned_pods=("b",))) == 1
    assert eligible_pods(snap, model(pinned_pods=("b", "c"))) == 2
