"""Nothing a request or a store names can make the puller write outside its cache."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from mesh.errors import InvalidRequest, UnsafePath
from mesh.puller.paths import check_model_id, check_storage_path, join_inside, safe_relative


@pytest.mark.parametrize("model_id", ["mnist", "mnist-onnx__isvc-6b2eb0b8bf", "a.b_c-1"])
def test_ordinary_model_ids_pass(model_id: str) -> None:
    check_model_id(model_id)


@pytest.mark.parametrize("model_id", ["..", ".", "../etc", "a/b", "a\\b", "/abs"])
def test_model_ids_shaped_like_paths_are_refused(model_id: str) -> None:
    with pytest.raises(UnsafePath):
        check_model_id(model_id)


@pytest.mark.parametrize("model_id", ["", "x" * 254, "tab\there"])
def test_empty_long_or_unprintable_model_ids_are_refused(model_id: str) -> None:
    with pytest.raises(InvalidRequest):
        check_model_id(model_id)


def test_storage_paths_are_normalised() -> None:
    assert check_storage_path("models/mnist/") == "models/mnist"
    assert check_storage_path("models/mnist.onnx") == "models/mnist.onnx"


@pytest.mark.parametrize(
    "path",
    ["../etc/passwd", "/etc/passwd", "a/../../b", "a//b", "a/./b", "a\\..\\b", "a\0b", "..", "/"],
)
def test_traversal_in_storage_paths_is_refused(path: str) -> None:
    with pytest.raises(UnsafePath):
        check_storage_path(path)


def test_a_link_inside_the_root_cannot_lead_out(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    (root / "escape").symlink_to(tmp_path / "outside")
    (root / "inside").mkdir()
    assert join_inside(root, safe_relative("inside/x", "x")) == root / "inside" / "x"
    with pytest.raises(UnsafePath, match="link"):
        join_inside(root, PurePosixPath("escape/x"))
