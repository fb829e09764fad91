"""`mesh up` dies, and so do its children; a --storage that does not exist is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from tests.helpers import free_port, wait_until

MESH = Path(sys.executable).parent / "mesh"
ROOT = Path(__file__).resolve().parents[1]


def test_a_storage_directory_that_does_not_exist_is_refused_at_start(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(MESH), "up", "--storage", str(tmp_path / "nope"), "--port", str(free_port())],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode != 0
    assert f"--storage {tmp_path / 'nope'}: no such directory" in result.stderr


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(c) for c in text]
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; only its parent (init, now) has to reap it


@pytest.mark.slow
def test_children_of_a_killed_mesh_up_stop_with_it(model_dir: Path) -> None:
    port = free_port()
    up = subprocess.Popen(
        [str(MESH), "up", "--storage", str(model_dir), "--pods", "1", "--port", str(port),
         "--rest-port", "0"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    children: list[int] = []
    try:
        grpc.channel_ready_future(grpc.insecure_channel(f"127.0.0.1:{port}")).result(120)
        children = wait_until(lambda: len(_children(up.pid)) >= 4 and _children(up.pid))
        assert all(_alive(c) for c in children)  # etcd, a puller, a pod and the router
        os.kill(up.pid, signal.SIGKILL)
        up.wait(10)
        wait_until(lambda: not any(_alive(c) for c in children), timeout=60, what="children")
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)
        for child in children:  # whatever outlived it, so that a failure leaves nothing behind
            if _alive(child):
                os.kill(child, signal.SIGKILL)
