"""A standalone pod's v2 REST port (`mesh pod --models DIR --rest-port P`): the same data plane
as its gRPC service, with tritonclient.http and raw httpx."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from tests.helpers import infer_request, running_pod


def test_a_standalone_pod_serves_rest_and_its_repository(model_dir: Path) -> None:
    with running_pod(models=model_dir, rest_port=0) as pod:
        port = pod.server.rest_port
        assert port
        client = triton_http.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_server_ready()
        x = np.linspace(-1, 1, 128, dtype=np.float32).reshape(2, 64)
        tensor = triton_http.InferInput("input__0", [2, 64], "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        rest = client.infer("xgb", [tensor]).as_numpy("output__0")
        grpc_answer = pod.v2.ModelInfer(infer_request("xgb", input__0=x))
        want = np.frombuffer(grpc_answer.raw_output_contents[0], np.float32)
        np.testing.assert_array_equal(rest, want)
        index = {m["name"]: m["state"] for m in client.get_model_repository_index()}
        assert index["xgb"] == "READY" and index["mlp"] == "UNAVAILABLE"
        client.load_model("mlp")
        assert client.is_model_ready("mlp")
        client.unload_model("mlp")
        assert not client.is_model_ready("mlp")
        with pytest.raises(InferenceServerException) as err:
            client.load_model("nope")
        assert "not found" in str(err.value)
        base = f"http://127.0.0.1:{port}"
        missing = httpx.post(f"{base}/v2/models/nope/infer", content=b"{}")
        assert missing.status_code == 404 and "nope" in missing.json()["error"]
        bad = httpx.post(
            f"{base}/v2/models/xgb/infer",
            json={"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [1, 3],
                              "data": [1, 2, 3]}]},
        )  # fmt: skip
        assert bad.status_code == 400 and "the model expects" in bad.json()["error"]
        client.close()


def test_a_pod_serves_no_rest_unless_asked(model_dir: Path) -> None:
    with running_pod(models=model_dir) as pod:
        assert pod.server.rest_port is None


def test_a_pods_grpc_port_serves_the_repository_extension(model_dir: Path) -> None:
    import tritonclient.grpc as triton_grpc

    with running_pod(models=model_dir) as pod:
        client = triton_grpc.InferenceServerClient(pod.address)
        assert "model_repository" in client.get_server_metadata().extensions
        index = {m.name: m.state for m in client.get_model_repository_index().models}
        assert index["xgb"] == "UNAVAILABLE"
        client.load_model("xgb")
        assert client.is_model_ready("xgb")
        ready = client.get_model_repository_index()
        assert "xgb" in {m.name for m in ready.models if m.state == "READY"}
        client.unload_model("xgb")
        assert not client.is_model_ready("xgb")
        with pytest.raises(InferenceServerException) as err:
            client.load_model("nope")
        assert "NOT_FOUND" in str(err.value.status())
        client.close()
