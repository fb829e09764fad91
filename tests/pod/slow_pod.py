"""A pod process serving FakeRuntime models, for lifecycle tests.

python -m tests.pod.slow_pod DIR PORT [ETCD_URL POD_ID]
"""

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
    cluster = {}
    if len(sys.argv) > 3:
        cluster = {"etcd": sys.argv[3], "pod_id": sys.argv[4], "lease_ttl": 2,
                   "etcd_prefix": sys.argv[5]}  # fmt: skip
    settings = PodSettings(
        host="127.0.0.1", port=int(sys.argv[2]), metrics_port=None, capacity=2**30,
        models=Path(sys.argv[1]), drain_timeout=20, **cluster,
    )  # fmt: skip
    asyncio.run(serve(settings, RuntimeRegistry([FakeRuntime()])))
