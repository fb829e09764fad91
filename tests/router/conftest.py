from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from mesh.pod.artifacts import DirectoryArtifacts
from tests.cluster.conftest import etcd, prefix  # noqa: F401  (shared fixtures)
from tests.cluster.etcd_server import EtcdServer
from tests.helpers import RunningPod, running_pod


@pytest.fixture
def pods(
    etcd: EtcdServer,  # noqa: F811
    prefix: str,  # noqa: F811
    model_dir: Path,
) -> Iterator[list[RunningPod]]:
    """Two pods in one mesh, each with room for a few models, storage = the model directory."""
    with ExitStack() as stack:
        yield [
            stack.enter_context(
                running_pod(
                    artifacts=DirectoryArtifacts(model_dir),
                    etcd=etcd.url,
                    etcd_prefix=prefix,
                    pod_id=f"pod-{i}",
                    lease_ttl=5,
                    capacity=2**30,
                )
            )
            for i in range(2)
        ]
