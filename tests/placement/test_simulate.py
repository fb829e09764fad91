"""The simulator drives the real placement code, and its fast pod-local LRU is choose_victims'."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from bench import simulate
from mesh.placement.eviction import choose_victims

TINY = replace(
    simulate.PRESETS["small"],
    models=1_000,
    pods=4,
    requests=30_000,
    copy_add_rate=1.0,
    check_victims=True,
)


def test_a_small_run_agrees_with_choose_victims_and_accounts_for_every_request() -> None:
    results = {p: simulate.run_one((TINY, "zipf", p)) for p in ("mesh", "random", "ideal")}
    for r in results.values():
        assert r["requests"] == TINY.requests
        assert 0.5 < r["hit_ratio"] < 1.0
    # check_victims would have raised had the pods' fast path ever chosen other victims.
    mesh = results["mesh"]
    assert mesh["decide_us_p50"] is not None  # placement decided the misses
    assert mesh["evictions"] > 0 and mesh["failed_loads"] > 0 and mesh["copies_added"] > 0
    for r in (mesh, results["random"]):
        # Every request was served at once, waited for a load, started one, or was refused.
        started = r["loads"] - r["copies_added"]
        assert r["hits"] + r["waits"] + started + r["rejected"] == r["requests"]
    assert results["ideal"]["hits"] + results["ideal"]["loads"] == TINY.requests


@settings(max_examples=50)
@given(
    st.lists(st.tuples(st.integers(0, 999), st.floats(0, 100)), max_size=30),
    st.integers(1, 30 << 30),
    st.sampled_from([0.0, 30.0]),
    st.floats(0, 60),
)
def test_the_pods_fast_eviction_path_takes_choose_victims_victims(
    uses: list[tuple[int, float]], need: int, min_age: float, wait: float
) -> None:
    cfg = replace(TINY, min_age=min_age, check_victims=False)
    mesh = simulate.Mesh(cfg, simulate.workload(cfg, "zipf"), "mesh")
    pod = mesh.pods[0]
    pod.lru = OrderedDict()
    t = 0.0
    for model, gap in uses:  # uses in time order, as the simulation makes them
        t += gap
        pod.lru[model] = t
        pod.lru.move_to_end(model)
    now = t + wait
    fast = mesh.victims(pod, need, now)
    expected = choose_victims(mesh.held_now(pod), need, now, min_age)
    assert (None if fast is None else [mesh.names[m] for m in fast]) == expected
