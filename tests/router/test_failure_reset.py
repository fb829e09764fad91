"""Failures that can be cleared: a fixed registration, `mesh load`, and unregister + register
all try a model again at once; the cap is a setting and the message names the current spec."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from mesh.gen import management_pb2 as mpb
from tests.cluster.etcd_server import EtcdServer
from tests.helpers import RunningPod, infer_request, running_router

MESH = Path(sys.executable).parent / "mesh"
X = np.ones((1, 64), np.float32)


def _register(router, model: str, path: str) -> None:  # type: ignore[no-untyped-def]
    router.management.RegisterModel(
        mpb.RegisterModelRequest(model_id=model, format="onnx", storage_path=path)
    )


def _fails(router, model: str) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        router.v2.ModelInfer(infer_request(model, input=X), timeout=30)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    return str(err.value.details())


def test_failed_loads_are_cleared_by_a_new_registration_a_retry_or_unregister(
    etcd: EtcdServer, prefix: str, pods: list[RunningPod]
) -> None:
    with running_router(
        etcd=etcd.url, etcd_prefix=prefix, failure_attempts=2, failure_ttl=3600
    ) as router:
        core = router.server.router
        _register(router, "m", "corrupt")
        _fails(router, "m")
        blocked = _fails(router, "m")
        assert "at most 2 attempts within 3600s" in blocked
        assert "onnx from default:corrupt" in blocked  # the spec it is about
        # The files fixed and registered again: loaded at once, no wait for the window.
        _register(router, "m", "mlp")
        assert router.v2.ModelInfer(infer_request("m", input=X), timeout=30).outputs

        _register(router, "n", "corrupt")
        _fails(router, "n")
        started = core.loads_started
        _fails(router, "n")
        assert core.loads_started == started  # blocked: nothing tried
        # An explicit retry tries again (and fails again, the files still being broken).
        result = subprocess.run(
            [str(MESH), "load", "n", "--router", router.address],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 1 and "FAILED_PRECONDITION" in result.stderr
        assert core.loads_started > started
        # Unregister and register: a clean slate.
        router.management.UnregisterModel(mpb.UnregisterModelRequest(model_id="n"))
        _register(router, "n", "corrupt")
        started = core.loads_started
        _fails(router, "n")
        assert core.loads_started > started
