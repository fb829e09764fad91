"""The pvc and file backends: a mounted directory, copied into the cache, never escaped."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from mesh.errors import ArtifactNotFound, StorageConfigError, UnsafePath
from mesh.storageref import StorageRef
from tests.puller.conftest import Rig


async def test_a_pvc_claim_serves_files_and_directories(
    tmp_path: Path, make_rig: Callable[..., Rig]
) -> None:
    claim = tmp_path / "pvc" / "models-claim"
    (claim / "mlp").mkdir(parents=True)
    (claim / "mlp" / "model.onnx").write_bytes(b"onnx" * 1000)
    (claim / "mlp" / "mesh.json").write_text("{}")
    (claim / "single.ubj").write_bytes(os.urandom(300_000))
    rig = make_rig({"pvc": {"type": "pvc", "name": "models-claim"}})
    one = await rig.puller.pull("single", StorageRef("pvc", "single.ubj"))
    assert one.local_path.name == "single.ubj"
    assert one.local_path.read_bytes() == (claim / "single.ubj").read_bytes()
    tree = await rig.puller.pull("mlp", StorageRef("pvc", "mlp"))
    assert sorted(p.name for p in tree.local_path.iterdir()) == ["mesh.json", "model.onnx"]
    assert tree.size == 4002
    assert rig.metric("mesh_puller_downloaded_bytes_total", type="file") == 300_000 + 4002


async def test_links_and_dotdot_cannot_leave_the_directory(
    tmp_path: Path, make_rig: Callable[..., Rig]
) -> None:
    root = tmp_path / "root"
    (root / "models").mkdir(parents=True)
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    (root / "models" / "leak.txt").symlink_to(secret)
    (root / "outside").symlink_to(tmp_path)
    rig = make_rig({"default": {"type": "file", "root": str(root)}})
    with pytest.raises(UnsafePath):
        await rig.puller.pull("m1", StorageRef("", "models/leak.txt"))
    with pytest.raises(UnsafePath):
        await rig.puller.pull("m2", StorageRef("", "outside/secret.txt"))
    with pytest.raises(UnsafePath):
        await rig.puller.pull("m3", StorageRef("", "models"))  # the prefix holds the link
    with pytest.raises(UnsafePath):
        await rig.puller.pull("m4", StorageRef("", "../secret.txt"))
    with pytest.raises(ArtifactNotFound, match="'default'"):
        await rig.puller.pull("m5", StorageRef("", "models/missing.onnx"))


async def test_a_missing_claim_is_a_configuration_error(
    tmp_path: Path, make_rig: Callable[..., Rig]
) -> None:
    rig = make_rig({"pvc": {"type": "pvc", "name": "nope"}})
    with pytest.raises(StorageConfigError, match="not a directory"):
        await rig.puller.pull("m", StorageRef("pvc", "x"))
