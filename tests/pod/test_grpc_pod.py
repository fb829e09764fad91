"""A real pod on loopback, queried with tritonclient.grpc and the raw stubs."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
import xgboost as xgb
from tritonclient.utils import InferenceServerException

from mesh.examples import ALL_DATATYPES
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import runtime_pb2 as rpb
from mesh.tensors import DATATYPES
from tests.helpers import RunningPod, infer_request, output_array


@pytest.fixture
def client(pod: RunningPod) -> triton.InferenceServerClient:
    c = triton.InferenceServerClient(pod.address)
    yield c
    c.close()


def test_server_rpcs_tell_the_truth(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta.name == "mesh"
    assert meta.version


def test_model_ready_and_metadata(client: triton.InferenceServerClient) -> None:
    assert not client.is_model_ready("mlp")  # available, not loaded until first asked
    meta = client.get_model_metadata("mlp")  # metadata needs the model: this loads it
    assert client.is_model_ready("mlp")
    assert meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("input", "FP32", [-1, 64])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("output", "FP32", [-1, 10])
    ]


def test_unknown_model_is_not_found(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("no-such-model")
    assert err.value.status() == "StatusCode.NOT_FOUND"
    assert "no-such-model" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        client.is_model_ready("../etc")
    # A name that could never be a model's is the client's mistake (mesh.ids), not a miss.
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "is not valid" in err.value.message()


def test_onnx_matches_onnxruntime_in_process(
    client: triton.InferenceServerClient, model_dir: Path
) -> None:
    x = np.random.default_rng(1).standard_normal((32, 64)).astype(np.float32)
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("mlp", [inp])
    want = ort.InferenceSession(str(model_dir / "mlp" / "model.onnx")).run(None, {"input": x})[0]
    np.testing.assert_array_equal(result.as_numpy("output"), want)


@pytest.mark.parametrize("model", ["xgb", "xgb-json"])
def test_xgboost_matches_booster_in_process(
    client: triton.InferenceServerClient, model_dir: Path, model: str
) -> None:
    x = np.random.default_rng(2).standard_normal((7, 64)).astype(np.float32)
    inp = triton.InferInput("input__0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(model, [inp])
    file = next((model_dir / model).glob("model.*"))
    want = xgb.Booster(model_file=str(file)).inplace_predict(x)
    np.testing.assert_array_equal(result.as_numpy("output__0"), want)


@pytest.mark.parametrize(
    ("model", "inp", "out"), [("ts", "x", "y"), ("exported", "input", "output__0")]
)
def test_torch_matches_module_in_process(
    client: triton.InferenceServerClient, model_dir: Path, model: str, inp: str, out: str
) -> None:
    import torch

    x = np.random.default_rng(3).standard_normal((5, 16)).astype(np.float32)
    tensor = triton.InferInput(inp, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(model, [tensor])
    path = next((model_dir / model).glob("model.pt*"))
    if path.suffix == ".pt2":
        module = torch.export.load(str(path)).module()
    else:
        module = torch.jit.load(str(path))
    with torch.inference_mode():
        want = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(result.as_numpy(out), want, rtol=1e-6, atol=1e-6)


def _sample(datatype: str, n: int = 6) -> np.ndarray:
    rng = np.random.default_rng(4)
    if datatype == "BYTES":
        return np.array([b"", b"a", b"\x00\x01", "é".encode(), b"x" * 300, b"z"][:n], dtype=object)
    if datatype == "BOOL":
        return rng.integers(0, 2, n).astype(bool)
    dtype = DATATYPES[datatype]
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)
    return rng.standard_normal(n).astype(dtype)


@pytest.mark.parametrize("datatype", ALL_DATATYPES)
def test_every_datatype_round_trips_raw_through_tritonclient(
    client: triton.InferenceServerClient, datatype: str
) -> None:
    inputs = []
    for dt in ALL_DATATYPES:
        data = _sample(dt)
        tensor = triton.InferInput(f"in_{dt}", list(data.shape), dt)
        tensor.set_data_from_numpy(data)
        inputs.append(tensor)
    result = client.infer(
        "identity", inputs, outputs=[triton.InferRequestedOutput(f"out_{datatype}")]
    )
    got = result.as_numpy(f"out_{datatype}")
    np.testing.assert_array_equal(got, _sample(datatype))
    assert [o.name for o in result.get_response().outputs] == [f"out_{datatype}"]


def test_every_datatype_round_trips_in_typed_contents(pod: RunningPod) -> None:
    from mesh.pod.codec import CONTENTS_FIELD

    request = pb.ModelInferRequest(model_name="identity")
    for dt in ALL_DATATYPES:
        tensor = request.inputs.add(name=f"in_{dt}", datatype=dt, shape=[6])
        data = _sample(dt)
        if dt == "FP16":
            continue  # FP16 has no typed field; covered below as the one raw-only type
        getattr(tensor.contents, CONTENTS_FIELD[dt]).extend(data.tolist())
    fp16 = next(t for t in request.inputs if t.datatype == "FP16")
    request.inputs.remove(fp16)
    with pytest.raises(grpc.RpcError) as err:
        pod.v2.ModelInfer(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "in_FP16" in err.value.details()  # missing input named

    request.inputs.add(name="in_FP16", datatype="FP16", shape=[6])
    with pytest.raises(grpc.RpcError) as err:
        pod.v2.ModelInfer(request)
    assert "raw_input_contents" in err.value.details()  # FP16 must travel raw: said so


def test_typed_contents_round_trip_without_fp16(pod: RunningPod, model_dir: Path) -> None:
    from mesh import examples
    from mesh.pod.codec import CONTENTS_FIELD

    typed = [dt for dt in ALL_DATATYPES if dt != "FP16"]
    examples.onnx_identity(model_dir / "identity-typed", typed)
    request = pb.ModelInferRequest(model_name="identity-typed")
    for dt in typed:
        tensor = request.inputs.add(name=f"in_{dt}", datatype=dt, shape=[6])
        getattr(tensor.contents, CONTENTS_FIELD[dt]).extend(_sample(dt).tolist())
    response = pod.v2.ModelInfer(request)
    for dt in typed:
        if dt == "BYTES":
            i = [o.name for o in response.outputs].index("out_BYTES")
            raw = response.raw_output_contents[i]
            items, offset = [], 0
            while offset < len(raw):
                n = int.from_bytes(raw[offset : offset + 4], "little")
                items.append(raw[offset + 4 : offset + 4 + n])
                offset += 4 + n
            assert items == list(_sample(dt))
        else:
            np.testing.assert_array_equal(output_array(response, f"out_{dt}"), _sample(dt))


def _bad(pod: RunningPod, request: pb.ModelInferRequest) -> str:
    with pytest.raises(grpc.RpcError) as err:
        pod.v2.ModelInfer(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    return err.value.details()


def test_bad_inputs_are_invalid_argument_naming_the_tensor(pod: RunningPod) -> None:
    x = np.zeros((2, 64), np.float32)
    good = infer_request("mlp", input=x)
    assert output_array(pod.v2.ModelInfer(good), "output").shape == (2, 10)

    short = infer_request("mlp", input=x)
    short.raw_input_contents[0] = short.raw_input_contents[0][:-1]
    assert "'input'" in _bad(pod, short) and "511" in _bad(pod, short)

    wrong_type = infer_request("mlp", input=x.astype(np.float64))
    assert "'input'" in _bad(pod, wrong_type) and "FP64" in _bad(pod, wrong_type)

    wrong_rank = infer_request("mlp", input=np.zeros((2, 64, 1), np.float32))
    assert "'input'" in _bad(pod, wrong_rank)

    wrong_dim = infer_request("mlp", input=np.zeros((2, 63), np.float32))
    assert "'input'" in _bad(pod, wrong_dim)

    unknown = infer_request("mlp", input=x, extra=x)
    assert "'extra'" in _bad(pod, unknown)

    out = infer_request("mlp", input=x)
    out.outputs.add(name="nope")
    assert "'nope'" in _bad(pod, out)

    count = infer_request("mlp", input=x)
    count.raw_input_contents.append(b"")
    assert "raw_input_contents" in _bad(pod, count)

    negative = pb.ModelInferRequest(model_name="mlp")
    negative.inputs.add(name="input", datatype="FP32", shape=[-2, 64])
    negative.raw_input_contents.append(b"")
    assert "'input'" in _bad(pod, negative)

    huge = pb.ModelInferRequest(model_name="mlp")
    huge.inputs.add(name="input", datatype="FP32", shape=[2**40, 64])
    huge.raw_input_contents.append(b"\0" * 256)
    assert "'input'" in _bad(pod, huge)

    typed_short = pb.ModelInferRequest(model_name="mlp")
    typed_short.inputs.add(
        name="input", datatype="FP32", shape=[1, 64]
    ).contents.fp32_contents.extend([1.0])
    assert "'input'" in _bad(pod, typed_short)

    bogus_type = infer_request("mlp", input=x)
    bogus_type.inputs[0].datatype = "FP128"
    assert "'input'" in _bad(pod, bogus_type)

    bad_bytes = pb.ModelInferRequest(model_name="identity")
    for dt in ALL_DATATYPES:
        t = bad_bytes.inputs.add(name=f"in_{dt}", datatype=dt, shape=[1])
        if dt == "BYTES":
            bad_bytes.raw_input_contents.append((1000).to_bytes(4, "little") + b"abc")
        else:
            bad_bytes.raw_input_contents.append(b"\0" * DATATYPES[dt].itemsize)
        assert t
    assert "'in_BYTES'" in _bad(pod, bad_bytes)

    not_text = infer_request("identity", **{f"in_{dt}": _sample(dt, 1) for dt in ALL_DATATYPES})
    i = [t.name for t in not_text.inputs].index("in_BYTES")
    not_text.raw_input_contents[i] = (1).to_bytes(4, "little") + b"\xff"
    assert "'in_BYTES'" in _bad(pod, not_text)  # ONNX strings are UTF-8 text

    # ...and the pod is still serving.
    assert output_array(pod.v2.ModelInfer(good), "output").shape == (2, 10)


@pytest.mark.slow
def test_tensor_beyond_max_message_size_is_refused_and_pod_survives(pod: RunningPod) -> None:
    big = infer_request("mlp", input=np.zeros((100 * 2**20 // 256, 64), np.float32))  # 100 MiB
    with pytest.raises(grpc.RpcError) as err:
        pod.v2.ModelInfer(big)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    small = infer_request("mlp", input=np.ones((1, 64), np.float32))
    assert output_array(pod.v2.ModelInfer(small), "output").shape == (1, 10)
    assert pod.v2.ServerLive(pb.ServerLiveRequest()).live


def test_corrupt_model_fails_to_load_and_pod_keeps_serving(pod: RunningPod) -> None:
    request = infer_request("corrupt", input=np.zeros((1, 64), np.float32))
    with pytest.raises(grpc.RpcError) as err:
        pod.v2.ModelMetadata(pb.ModelMetadataRequest(name="corrupt"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "corrupt" in err.value.details()
    # Remembered: the next request fails fast with the same error, no second load.
    with pytest.raises(grpc.RpcError) as again:
        pod.v2.ModelInfer(request)
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "failed to load" in again.value.details()
    status = pod.control.RuntimeStatus(rpb.RuntimeStatusRequest())
    failed = [m for m in status.models if m.state == rpb.ModelStatus.FAILED]
    assert [m.model_id for m in failed] == ["corrupt"]
    assert failed[0].error
    assert 'mesh_pod_load_failures_total{reason="error"} 1.0' in pod.metrics_text()
    assert pod.v2.ServerReady(pb.ServerReadyRequest()).ready
    ok = infer_request("mlp", input=np.ones((1, 64), np.float32))
    assert output_array(pod.v2.ModelInfer(ok), "output").shape == (1, 10)


def test_concurrent_first_requests_share_one_load(pod: RunningPod) -> None:
    x = np.ones((1, 64), np.float32)
    errors: list[BaseException] = []
    barrier = threading.Barrier(16)

    def call() -> None:
        try:
            barrier.wait()
            pod.v2.ModelInfer(infer_request("mlp", input=x))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert "mesh_pod_load_seconds_count 1.0" in pod.metrics_text()
    assert 'mesh_pod_inference_requests_total{status="OK"} 16.0' in pod.metrics_text()


def test_control_api_load_status_unload(pod: RunningPod, model_dir: Path) -> None:
    path = str(model_dir / "xgb")
    loaded = pod.control.LoadModel(rpb.LoadModelRequest(model_id="fraud-v1", path=path))
    assert not loaded.already_loaded
    assert loaded.size_bytes > 0 and loaded.estimated_bytes > 0
    again = pod.control.LoadModel(rpb.LoadModelRequest(model_id="fraud-v1", path=path))
    assert again.already_loaded
    x = np.zeros((3, 64), np.float32)
    assert output_array(
        pod.v2.ModelInfer(infer_request("fraud-v1", input__0=x)), "output__0"
    ).shape == (3,)

    status = pod.control.RuntimeStatus(rpb.RuntimeStatusRequest())
    assert status.state == rpb.RuntimeStatusResponse.READY
    assert status.capacity_bytes == 2**30
    assert set(status.runtimes) == {"onnx", "xgboost", "torch", "transformers"}
    (model,) = [m for m in status.models if m.model_id == "fraud-v1"]
    assert model.state == rpb.ModelStatus.LOADED
    assert model.format == "xgboost"
    assert model.size_bytes == loaded.size_bytes
    assert model.last_used > 0 and model.in_flight == 0
    assert status.used_bytes >= model.size_bytes

    unloaded = pod.control.UnloadModel(rpb.UnloadModelRequest(model_id="fraud-v1"))
    assert unloaded.was_loaded and unloaded.freed_bytes == loaded.size_bytes
    with pytest.raises(grpc.RpcError) as err:
        pod.v2.ModelInfer(infer_request("fraud-v1", input__0=x))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert not pod.control.UnloadModel(rpb.UnloadModelRequest(model_id="fraud-v1")).was_loaded


def test_control_api_rejects_bad_loads(pod: RunningPod, model_dir: Path) -> None:
    cases = [
        (
            rpb.LoadModelRequest(model_id="", path=str(model_dir / "mlp")),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (rpb.LoadModelRequest(model_id="m", path="/nonexistent"), grpc.StatusCode.NOT_FOUND),
        (
            rpb.LoadModelRequest(model_id="m", path=str(model_dir / "mlp"), format="tensorflow"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            rpb.LoadModelRequest(model_id="m", path=str(model_dir / "mlp"), options={"bogus": "1"}),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            rpb.LoadModelRequest(
                model_id="m", path=str(model_dir / "mlp"), options={"intra_op_threads": "many"}
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]
    for request, code in cases:
        with pytest.raises(grpc.RpcError) as err:
            pod.control.LoadModel(request)
        assert err.value.code() == code, (request, err.value.details())
    assert pod.v2.ServerReady(pb.ServerReadyRequest()).ready


def test_metrics_endpoint_serves_capacity_and_latency(model_dir: Path) -> None:
    import urllib.request

    from tests.helpers import running_pod

    with running_pod(models=model_dir, metrics_port=0) as pod:
        pod.v2.ModelInfer(infer_request("mlp", input=np.ones((1, 64), np.float32)))
        url = f"http://127.0.0.1:{pod.server.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
    assert 'mesh_pod_capacity_bytes{tier="device"} 1.073741824e+09' in text
    assert 'mesh_pod_capacity_bytes{tier="host"} 0.0' in text  # no host tier asked for
    assert 'mesh_pod_device_memory_bytes{device="host",kind="used"}' in text
    assert "mesh_pod_inference_seconds_count 1.0" in text
    assert "mesh_pod_models_loaded 1.0" in text
    # The totals carry no model label unless asked for; per-model series are the bounded ones.
    labelled = {line.split("{")[0] for line in text.splitlines() if 'model="' in line}
    assert labelled <= {
        "mesh_pod_model_requests_total", "mesh_pod_model_requests_created",
        "mesh_pod_model_inference_seconds_bucket", "mesh_pod_model_inference_seconds_count",
        "mesh_pod_model_inference_seconds_sum", "mesh_pod_model_inference_seconds_created",
    }, labelled  # fmt: skip
