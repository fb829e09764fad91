"""The per-format size factors a pod learns from its loads and publishes to the mesh."""

from __future__ import annotations

from pathlib import Path

from mesh.pod.cachetypes import ModelSource
from mesh.pod.sizing import SizeFactors
from mesh.runtimes.registry import RuntimeRegistry
from tests.fakes import FakeRuntime


def test_learned_factors_are_published_rounded_so_a_small_drift_rewrites_nothing(
    tmp_path: Path,
) -> None:
    file = tmp_path / "model.bin"
    file.write_bytes(b"x" * 100_000)
    runtime = FakeRuntime()
    factors = SizeFactors(RuntimeRegistry([runtime]))
    assert factors.published() == {}  # nothing learned: nothing to tell the mesh
    source = ModelSource("m", runtime.name, file)
    factors.learn(source, 500_000)  # 5 bytes in memory per byte on disk, weighed 0.3 against 1.0
    assert factors.published() == {runtime.name: 2.2}
    factors.learn(source, 225_000)  # the factor drifts to 2.215
    assert factors.published() == {runtime.name: 2.2}
    assert factors.estimate(source) == int(100_000 * 2.215)  # the pod itself keeps full precision
