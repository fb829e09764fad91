"""A cache disk that is really full (a 1 MiB tmpfs under a 1 GiB budget): the pull fails with
RESOURCE_EXHAUSTED naming the disk, leaves nothing behind, and smaller artifacts still come."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mesh.errors import CacheFull
from mesh.storageref import StorageRef
from tests.puller.conftest import Rig, tree_bytes


def _same(a: str, b: Path) -> bool:
    return Path(a).read_bytes() == b.read_bytes()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:  # say what failed: the suite runs as root where CI runs it
        pytest.fail(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


async def test_a_full_cache_disk_is_resource_exhausted_and_leaves_nothing(
    tmp_path: Path, small_disk: Path, make_rig: Callable[..., Rig]
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "big.bin").write_bytes(os.urandom(3 << 20))
    (store / "small.bin").write_bytes(os.urandom(64 << 10))
    rig = make_rig(
        {"local": {"type": "file", "root": str(store)}},
        cache_dir=small_disk / "cache", cache_bytes=1 << 30,
    )  # fmt: skip
    with pytest.raises(CacheFull, match=r"(?i)disk|space"):
        await rig.puller.pull("big", StorageRef("local", "big.bin"))
    assert tree_bytes(small_disk) < 64 << 10  # no partial download left taking the room
    small = await rig.puller.pull("small", StorageRef("local", "small.bin"))
    assert _same(small.local_path, store / "small.bin")
