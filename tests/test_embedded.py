"""`mesh serve`: router, pod and local models in one process, no etcd."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from tests.helpers import free_port


@pytest.mark.slow
def test_mesh_serve_answers_every_model_in_the_directory(model_dir: Path) -> None:
    port, rest_port, metrics_port = free_port(), free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mesh", "serve", "--models", str(model_dir), "--port", str(port),
         "--rest-port", str(rest_port), "--metrics-port", str(metrics_port), "--capacity", "1Gi"],
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            try:
                if client.is_server_ready():
                    break
            except Exception:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.2)
        x = np.ones((2, 64), np.float32)
        for model, name, out in (("mlp", "input", "output"), ("xgb", "input__0", "output__0")):
            tensor = triton.InferInput(name, [2, 64], "FP32")
            tensor.set_data_from_numpy(x)
            assert client.infer(model, [tensor]).as_numpy(out).shape[0] == 2
        # Errors from the pod, called in process, keep their statuses.
        with pytest.raises(InferenceServerException) as err:
            client.infer("no-such-model", [tensor])
        assert err.value.status() == "StatusCode.NOT_FOUND"
        wrong = triton.InferInput("input__0", [2, 3], "FP32")
        wrong.set_data_from_numpy(np.ones((2, 3), np.float32))
        with pytest.raises(InferenceServerException) as err:
            client.infer("xgb", [wrong])
        assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "input__0" in err.value.message()
        client.close()
        # The same models over REST, on the same process.
        rest = f"http://127.0.0.1:{rest_port}"
        assert httpx.get(f"{rest}/v2/health/ready").json() == {"ready": True}
        body = {"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [2, 64],
                            "data": x.tolist()}]}  # fmt: skip
        answer = httpx.post(f"{rest}/v2/models/xgb/infer", json=body, timeout=30).json()
        assert answer["outputs"][0]["shape"] == [2]
        index = httpx.post(f"{rest}/v2/repository/index", json={"ready": True}).json()
        assert {m["name"] for m in index} == {"mlp", "xgb"}
        # One metrics port shows the router's requests and what its pod holds.
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        assert "mesh_pod_models_loaded 2.0" in metrics
        assert "mesh_pod_load_seconds_count 2.0" in metrics
        assert 'model="xgb"' in metrics and "mesh_router_requests_total" in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
