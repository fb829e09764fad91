"""The command line's composition roots, as a user meets them: a port in use is one line."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["router", "--host", "127.0.0.1", "--port", "{p}"], "--port"),
        (["router", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "{p}"],
         "--metrics-port"),
        (["router", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0", "--rest-port", "{p}"], "--rest-port"),
        (["pod", "--host", "127.0.0.1", "--port", "{p}"], "--port"),
        (["pod", "--host", "127.0.0.1", "--port", "0", "--no-metrics", "--rest-port", "{p}"],
         "--rest-port"),
        (["pod", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "{p}"], "--metrics-port"),
        (["puller", "--listen", "127.0.0.1:{p}", "--no-metrics", "--cache-dir", "{tmp}"],
         "--listen"),
        (["controller", "--metrics-port", "{p}"], "--metrics-port"),
    ],
)  # fmt: skip
def test_a_port_in_use_is_one_line_naming_it(
    argv: list[str], flag: str, busy_port: int, tmp_path: object
) -> None:
    args = [a.format(p=busy_port, tmp=tmp_path) for a in argv]
    done = subprocess.run(
        [sys.executable, "-m", "mesh", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert re.match(rf"mesh {argv[0]}: cannot listen on [0-9.]+:{busy_port} ", last), last
    assert "in use" in last and flag in last
