"""Generative models on a real pod: tritonclient's gRPC stream, ModelInfer, adapters, eviction."""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from mesh import examples as predictive
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import runtime_pb2 as rpb
from tests.helpers import RunningPod, running_pod, wait_until


@pytest.fixture(scope="module")
def repo(llm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mixed")
    for name in ("llama", "gpt2", "llama-lora"):
        (root / name).symlink_to(llm_dir / name)
    # The same Llama charged a 100 MB KV-cache budget, and a predictive model big enough that
    # the two do not fit one small pod together (~102 MB and ~34 MB in a 115 MiB pod, measured
    # as they are: the pod no longer charges a load the temporaries it freed).
    big = root / "llama-big"
    big.mkdir()
    for file in (llm_dir / "llama").iterdir():
        (big / file.name).symlink_to(file)
    (big / "mesh.json").write_text(json.dumps({"options": {"kv_cache_tokens": "400000"}}))
    predictive.onnx_mlp(root / "mlp-big", sizes=(64, 2048, 4096, 10))
    return root


@pytest.fixture(scope="module")
def pod(repo: Path) -> Iterator[RunningPod]:
    with running_pod(models=repo) as running:
        yield running


@pytest.fixture
def client(pod: RunningPod) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(pod.address)
    yield c
    c.close()


def _inputs(prompt: str, stream: bool | None = None, **sampling: Any) -> list[triton.InferInput]:
    text = triton.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([prompt.encode()], dtype=object))
    inputs = [text]
    if stream is not None:
        flag = triton.InferInput("stream", [1], "BOOL")
        flag.set_data_from_numpy(np.array([stream]))
        inputs.append(flag)
    if sampling:
        params = triton.InferInput("sampling_parameters", [1], "BYTES")
        params.set_data_from_numpy(np.array([json.dumps(sampling).encode()], dtype=object))
        inputs.append(params)
    return inputs


def _stream(
    client: triton.InferenceServerClient, model: str, requests: list[list[triton.InferInput]]
) -> dict[str, list[Any]]:
    """Send every request on one stream; each request id's responses (or errors), in order."""
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    for i, inputs in enumerate(requests):
        client.async_stream_infer(model, inputs, request_id=str(i))
    by_id: dict[str, list[Any]] = {str(i): [] for i in range(len(requests))}
    done = 0
    while done < len(requests):
        result, error = results.get(timeout=60)
        if error is not None:
            by_id[str(len(by_id))] = [error]  # an error names no id through tritonclient
            done += 1
            continue
        response = result.get_response()
        by_id[response.id].append(result)
        if response.parameters["triton_final_response"].bool_param:
            done += 1
    client.stop_stream()
    return by_id


def _text(result: Any) -> str:
    return "".join(x.decode() for x in result.as_numpy("text_output").reshape(-1))


def test_triton_stream_sends_tokens_as_they_come(
    client: triton.InferenceServerClient, pod: RunningPod
) -> None:
    prompts = ["the quick brown", "hello world", "the mesh"]
    greedy = {"temperature": 0, "max_tokens": 12}
    by_id = _stream(client, "llama", [_inputs(p, True, **greedy) for p in prompts])
    texts = ["".join(_text(r) for r in by_id[str(i)]) for i in range(3)]
    assert texts == [
        "fox jumps over the lazy dog",
        "this is a tiny language model",
        "serves many models on few machines",
    ]
    for i in range(3):
        responses = by_id[str(i)]
        assert len(responses) > 3  # one per token, not one at the end
        last = responses[-1].get_response().parameters
        assert last["finish_reason"].string_param == "stop"
        assert last["completion_tokens"].int64_param == 7
    # Tokens and time to first token by model (the pod's top-K label, bounded).
    metrics = pod.metrics_text()
    assert 'mesh_pod_output_tokens_total{model="llama"} 21.0' in metrics
    assert 'mesh_pod_time_to_first_token_seconds_count{model="llama"} 3.0' in metrics


def test_model_infer_on_a_generative_model_returns_the_whole_text(
    client: triton.InferenceServerClient,
) -> None:
    result = client.infer("gpt2", _inputs("the quick brown", None, temperature=0))
    assert _text(result) == "fox jumps over the lazy dog"
    stopped = client.infer("gpt2", _inputs("the quick brown", False, temperature=0, stop="lazy"))
    assert _text(stopped) == "fox jumps over the "
    meta = client.get_model_metadata("gpt2")
    assert meta.platform == "transformers"
    assert [t.name for t in meta.inputs] == ["text_input"]


@pytest.mark.parametrize(
    ("sampling", "message"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 2}, "top_p"),
    ],
)
def test_bad_sampling_parameters_are_invalid_argument(
    client: triton.InferenceServerClient, sampling: dict[str, Any], message: str
) -> None:
    with pytest.raises(InferenceServerException) as err:
        client.infer("llama", _inputs("hello", None, **sampling))
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert message in err.value.message()
    by_id = _stream(client, "llama", [_inputs("hello", True, **sampling)])
    (error,) = [r for rs in by_id.values() for r in rs]
    assert isinstance(error, InferenceServerException)
    assert message in error.message()


def test_a_prompt_on_a_predictive_model_is_refused(pod: RunningPod) -> None:
    request = pb.ModelInferRequest(model_name="mlp-big")
    t = request.inputs.add(name="text_input", datatype="BYTES", shape=[1])
    t.contents.bytes_contents.append(b"hello")
    with pytest.raises(grpc.RpcError) as err:
        pod.v2.ModelInfer(request)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_an_adapter_loads_its_base_first_and_answers_differently(
    client: triton.InferenceServerClient, pod: RunningPod
) -> None:
    pod.control.UnloadModel(rpb.UnloadModelRequest(model_id="llama"))
    adapter = client.infer("llama-lora", _inputs("the quick brown", None, temperature=0))
    assert _text(adapter) == "fox sleeps under the old tree"
    status = pod.control.RuntimeStatus(rpb.RuntimeStatusRequest())
    loaded = {m.model_id: m for m in status.models if m.state == rpb.ModelStatus.LOADED}
    assert {"llama", "llama-lora"} <= set(loaded)
    assert loaded["llama-lora"].size_bytes < loaded["llama"].size_bytes
    base = client.infer("llama", _inputs("the quick brown", None, temperature=0))
    assert _text(base) == "fox jumps over the lazy dog"


def test_an_abandoned_stream_stops_its_generation(pod: RunningPod) -> None:
    request = pb.ModelInferRequest(model_name="llama", id="x")
    request.inputs.add(
        name="text_input", datatype="BYTES", shape=[1]
    ).contents.bytes_contents.append(b"hello")
    request.inputs.add(name="stream", datatype="BOOL", shape=[1]).contents.bool_contents.append(
        True
    )
    params = json.dumps({"max_tokens": 120, "ignore_eos": True}).encode()
    request.inputs.add(
        name="sampling_parameters", datatype="BYTES", shape=[1]
    ).contents.bytes_contents.append(params)
    client = triton.InferenceServerClient(pod.address)  # loads it: the engine exists
    client.infer("llama", _inputs("hello", None, max_tokens=1))
    client.close()
    call = pod.v2.ModelStreamInfer(iter([request]))
    engine = pod.plane.cache._entries["llama"].model.engine
    before = engine.tokens_generated
    first = next(call)
    assert not first.error_message
    assert engine.busy() == 1
    call.cancel()
    wait_until(lambda: engine.busy() == 0, what="the generation to stop")
    assert engine.tokens_generated - before < 100  # of the 120 it was asked for
    text = pod.metrics_text()
    assert "mesh_pod_time_to_first_token_seconds_count" in text


def test_an_llm_evicted_by_predictive_models_loads_again(repo: Path) -> None:
    with running_pod(models=repo, capacity=115 * 2**20) as small:
        c = triton.InferenceServerClient(small.address)
        try:
            assert _text(c.infer("llama-big", _inputs("hello world", None, temperature=0))) == (
                "this is a tiny language model"
            )
            x = triton.InferInput("input", [1, 64], "FP32")
            x.set_data_from_numpy(np.ones((1, 64), dtype=np.float32))
            c.infer("mlp-big", [x])
            assert not c.is_model_ready("llama-big")  # evicted to make room
            again = c.infer("llama-big", _inputs("the mesh", None, temperature=0))
            assert _text(again) == "serves many models on few machines"
            assert not c.is_model_ready("mlp-big")
        finally:
            c.close()


def test_an_llm_evicted_into_the_host_tier_comes_back_by_a_request_with_its_module(
    repo: Path,
) -> None:
    """A CPU pod with a host tier: the Llama evicted by a predictive model keeps its live module
    in host memory (RuntimeStatus says so), and a request for it promotes it: the same module,
    no load from its files."""
    with running_pod(models=repo, capacity=115 * 2**20, host_tier="64Mi") as small:
        c = triton.InferenceServerClient(small.address)
        try:
            assert _text(c.infer("llama-big", _inputs("hello world", None, temperature=0))) == (
                "this is a tiny language model"
            )
            module = small.plane.cache._entries["llama-big"].model.engine.model
            x = triton.InferInput("input", [1, 64], "FP32")
            x.set_data_from_numpy(np.ones((1, 64), dtype=np.float32))
            c.infer("mlp-big", [x])
            assert not c.is_model_ready("llama-big")  # evicted to make room
            status = small.control.RuntimeStatus(rpb.RuntimeStatusRequest())
            (demoted,) = status.demoted
            assert demoted.model_id == "llama-big" and demoted.host_copy_is_model
            assert demoted.host_bytes == status.host_used_bytes > 0
            again = c.infer("llama-big", _inputs("the mesh", None, temperature=0))
            assert _text(again) == "serves many models on few machines"
            assert small.plane.cache._entries["llama-big"].model.engine.model is module
            promotions = [
                line
                for line in small.metrics_text().splitlines()
                if line.startswith("mesh_pod_promotions_total ")
            ]
            assert promotions == ["mesh_pod_promotions_total 1.0"]
        finally:
            c.close()


def test_request_batching_options_on_a_generative_model_are_refused(
    pod: RunningPod, llm_dir: Path
) -> None:
    # batch.* merges tensor requests; a generative model batches its steps itself (max_batch).
    request = rpb.LoadModelRequest(
        model_id="llama-batched", path=str(llm_dir / "llama"), format="transformers",
        options={"batch.max_size": "8"},
    )  # fmt: skip
    with pytest.raises(grpc.RpcError) as err:
        pod.control.LoadModel(request)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "batch.max_size" in err.value.details() and "max_batch" in err.value.details()
    status = pod.control.RuntimeStatus(rpb.RuntimeStatusRequest())
    assert "llama-batched" not in [m.model_id for m in status.models]
    request.options.clear()
    request.options["max_batch"] = "4"  # the generative way loads
    assert pod.control.LoadModel(request).model_id == "llama-batched"
