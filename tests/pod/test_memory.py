"""The pod's RSS meter (mesh.pod.memory): each reading is the process's RSS now."""

from __future__ import annotations

import subprocess
import sys

_GROWS = """
import sys
from mesh.pod.memory import rss_bytes

before = rss_bytes()
block = bytearray(64 * 2**20)
block[:: 4096] = b"x" * len(block[:: 4096])  # touch every page: it is resident now
after = rss_bytes()
del block
print(before, after)
"""


def test_rss_follows_memory_touched_after_the_first_reading() -> None:
    """The meter keeps /proc/self/statm open; a second reading must still be the RSS of that
    moment, or every load would measure nothing. In a process of its own, as a pod is."""
    done = subprocess.run(
        [sys.executable, "-c", _GROWS], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    before, after = (int(x) for x in done.stdout.split())
    assert after - before >= 60 * 2**20


_FORKED = """
import os
from mesh.pod.memory import rss_bytes

rss_bytes()  # the parent's descriptor is open before the fork
pid = os.fork()
if pid == 0:
    before = rss_bytes()
    block = bytearray(64 * 2**20)
    block[:: 4096] = b"x" * len(block[:: 4096])
    os._exit(0 if rss_bytes() - before >= 60 * 2**20 else 1)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""


def test_a_forked_child_measures_its_own_rss() -> None:
    """A descriptor of /proc/self/statm names the process that opened it: a forked child
    reading the parent's would see none of its own memory."""
    done = subprocess.run(
        [sys.executable, "-c", _FORKED], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "0"
