from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from mesh import examples
from tests.helpers import RunningPod, running_pod

# Hypothesis's per-example deadline (200 ms) is a timing assertion: on a busy machine a correct
# example fails it. Properties are checked for what they return, never for how fast.
settings.register_profile("mesh", deadline=None)
settings.load_profile("mesh")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository of real models, built once per session with the real frameworks."""
    root = tmp_path_factory.mktemp("models")
    examples.onnx_mlp(root / "mlp")
    examples.onnx_identity(root / "identity")
    examples.xgboost_booster(root / "xgb", n_trees=20)
    examples.xgboost_booster(root / "xgb-json", n_trees=5, suffix=".json")
    examples.torchscript_mlp(root / "ts")
    examples.torch_export_mlp(root / "exported")
    (root / "corrupt").mkdir()
    (root / "corrupt" / "model.onnx").write_bytes(b"\x08\x01this is not an onnx graph" * 10)
    return root


@pytest.fixture
def pod(model_dir: Path) -> Iterator[RunningPod]:
    with running_pod(models=model_dir) as running:
        yield running
