"""A pod process serving FakeRuntime models, for lifecycle tests: python -m tests.pod.slow_pod DIR PORT."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from mesh import logs
from mesh.pod.server import serve
from mesh.pod.settings import PodSettings
from mesh.runtimes.registry import RuntimeRegistry
from tests.fakes import FakeRuntime

if __name__ == "__main__":
    logs.configure("INFO")
    settings = PodSettings(
        host="127.0.0.1",
        port=int(sys.argv[2]),
        metrics_port=None,
        capacity=2**30,
        models=Path(sys.argv[1]),
        drain_timeout=20,
    )
    asyncio.run(serve(settings, RuntimeRegistry([FakeRuntime()])))
