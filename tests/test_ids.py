"""The one model-id rule (mesh.ids), as every door applies it."""

from __future__ import annotations

import pytest

from mesh.errors import InvalidIdentifier, InvalidRequest
from mesh.ids import RULE, check_id, check_registered_path

# Every id the hostile-world review registered successfully, and a few more.
HOSTILE_IDS = [
    "",
    ".",
    "..",
    "../../etc/passwd",
    "a/../../b",
    "mlp/../xgb",
    " ",
    "mlp\n",
    "x" * 10_000,
    "x" * 254,
    ".hidden",
    "-starts-with-dash",
    "tab\there",
    "caf\u00e9",
    "nul\0",
    "a\\b",
    "semi;colon",
    "a b",
]


@pytest.mark.parametrize("model_id", HOSTILE_IDS)
def test_hostile_ids_are_refused_naming_the_rule(model_id: str) -> None:
    with pytest.raises(InvalidIdentifier, match="is not valid") as err:
        check_id(model_id)
    assert RULE in str(err.value)
    assert len(str(err.value)) < 400  # a 10 kB id is not echoed back whole


@pytest.mark.parametrize(
    "model_id", ["mlp", "xgb-b", "ResNet50_v2", "fraud-v1.2", "_private", "x" * 253, "0"]
)
def test_ordinary_ids_pass(model_id: str) -> None:
    assert check_id(model_id) == model_id


@pytest.mark.parametrize(
    "path",
    ["../etc/passwd", "a/../../b", "a/./b", "a//b", "/abs", "..", ".", "a\\b", "a\nb", ""],
)
def test_storage_paths_with_dot_segments_are_refused(path: str) -> None:
    with pytest.raises(InvalidRequest):
        check_registered_path(path)


@pytest.mark.parametrize("path", ["models/mlp.onnx", "models/mnist/", "a b/c.json", "x"])
def test_ordinary_storage_paths_pass(path: str) -> None:
    assert check_registered_path(path) == path
