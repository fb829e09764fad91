"""`mesh pod --models DIR` with the README's layout: version directories under a model's name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mesh import examples
from mesh.errors import InvalidRequest
from mesh.pod.repository import ModelRepository, latest_version
from mesh.runtimes.registry import RuntimeRegistry
from tests.helpers import infer_request, output_array, running_pod


def test_a_directory_of_versions_is_served_as_its_newest(tmp_path: Path) -> None:
    examples.xgboost_booster(tmp_path / "fraud" / "v9", n_trees=3)
    examples.xgboost_booster(tmp_path / "fraud" / "v10", n_trees=3)
    (tmp_path / "fraud" / "notes").mkdir()  # not a version: ignored
    assert latest_version(tmp_path / "fraud") == tmp_path / "fraud" / "v10"
    repo = ModelRepository(tmp_path, RuntimeRegistry.discover(["xgboost"]))
    source = repo.resolve("fraud")
    assert source.format == "xgboost"
    assert source.file.parent == tmp_path / "fraud" / "v10"
    with running_pod(models=tmp_path) as pod:
        x = np.zeros((2, 64), np.float32)
        response = pod.v2.ModelInfer(infer_request("fraud", input__0=x))
        assert output_array(response, "output__0").shape == (2,)


def test_a_directory_with_neither_a_model_nor_versions_says_so(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    repo = ModelRepository(tmp_path, RuntimeRegistry.discover(["xgboost"]))
    with pytest.raises(InvalidRequest, match="expected one model file in empty/"):
        repo.resolve("empty")
