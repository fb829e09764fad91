"""Generative models through the router: tritonclient's stream, adapters beside their base,
cancellation across the hop, one load for many first requests. Real etcd, real pods."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as triton

from mesh import cli
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import management_pb2 as mpb
from mesh.pod.artifacts import DirectoryArtifacts
from tests.cluster.conftest import etcd, prefix  # noqa: F401  (shared fixtures)
from tests.cluster.etcd_server import EtcdServer
from tests.helpers import RunningPod, running_pod, running_router, wait_until
from tests.llm.test_pod import _inputs, _stream, _text


@pytest.fixture
def pods(
    etcd: EtcdServer,  # noqa: F811
    prefix: str,  # noqa: F811
    llm_dir: Path,
) -> Iterator[list[RunningPod]]:
    with ExitStack() as stack:
        yield [
            stack.enter_context(
                running_pod(
                    artifacts=DirectoryArtifacts(llm_dir),
                    etcd=etcd.url,
                    etcd_prefix=prefix,
                    pod_id=f"pod-{i}",
                    lease_ttl=5,
                )
            )
            for i in range(2)
        ]


def _register(router, model_id: str, path: str, base: str = "") -> None:  # type: ignore[no-untyped-def]
    router.management.RegisterModel(
        mpb.RegisterModelRequest(
            model_id=model_id, format="transformers", storage_path=path, base=base
        )
    )


def _holders(pods: list[RunningPod], model_id: str) -> list[str]:
    return [p.server.settings.pod_id for p in pods if p.plane.cache.is_loaded(model_id)]


def _request(model: str, prompt: str, **sampling: object) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id="r")
    request.inputs.add(
        name="text_input", datatype="BYTES", shape=[1]
    ).contents.bytes_contents.append(prompt.encode())
    request.inputs.add(name="stream", datatype="BOOL", shape=[1]).contents.bool_contents.append(
        True
    )
    request.inputs.add(
        name="sampling_parameters", datatype="BYTES", shape=[1]
    ).contents.bytes_contents.append(json.dumps(sampling).encode())
    return request


def test_stream_through_the_router_loads_on_a_miss_and_streams_tokens(
    etcd: EtcdServer,  # noqa: F811
    prefix: str,  # noqa: F811
    pods: list[RunningPod],
) -> None:
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        _register(router, "llama", "llama")
        client = triton.InferenceServerClient(router.address)
        try:
            greedy = {"temperature": 0, "max_tokens": 12}
            by_id = _stream(
                client,
                "llama",
                [_inputs(p, True, **greedy) for p in ("the quick brown", "hello world")],
            )
            assert ["".join(_text(r) for r in by_id[i]) for i in "01"] == [
                "fox jumps over the lazy dog",
                "this is a tiny language model",
            ]
            assert all(len(by_id[i]) > 3 for i in "01")  # forwarded token by token
            from prometheus_client import generate_latest

            metrics = generate_latest(router.server.registry).decode()
            assert "mesh_router_stream_first_response_seconds_count 2.0" in metrics
            whole = client.infer("llama", _inputs("the mesh", None, temperature=0))
            assert _text(whole) == "serves many models on few machines"
            assert len(_holders(pods, "llama")) == 1
            # An unknown model and bad parameters are errors on the stream, which goes on.
            by_id = _stream(client, "nope", [_inputs("hello", True)])
            (error,) = [r for rs in by_id.values() for r in rs]
            assert "nope" in error.message()
            by_id = _stream(client, "llama", [_inputs("hello", True, top_p=0)])
            (error,) = [r for rs in by_id.values() for r in rs]
            assert "top_p" in error.message()
        finally:
            client.close()


def test_adapters_are_served_beside_their_base_on_one_pod(
    etcd: EtcdServer,  # noqa: F811
    prefix: str,  # noqa: F811
    pods: list[RunningPod],
) -> None:
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        _register(router, "llama", "llama")
        router.run(router.server.mirror.wait_for(lambda m: "llama" in m.models))
        # The adapter through `mesh register --base`, as an operator would.
        assert cli.main(
            ["register", "llama-lora", "--format", "transformers", "--storage-path",
             "llama-lora", "--base", "llama", "--router", router.address]
        ) == 0  # fmt: skip
        with pytest.raises(grpc.RpcError) as err:
            _register(router, "orphan", "llama-lora", base="missing")
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        client = triton.InferenceServerClient(router.address)
        results: dict[int, str] = {}

        def ask(i: int) -> None:
            model = "llama-lora" if i % 2 else "llama"
            results[i] = _text(client.infer(model, _inputs("the quick brown", None, temperature=0)))

        try:
            ask(1)  # the adapter first: its base is loaded first, on the same pod
            assert _holders(pods, "llama") == _holders(pods, "llama-lora")
            threads = [threading.Thread(target=ask, args=(i,)) for i in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert {results[i] for i in range(0, 16, 2)} == {"fox jumps over the lazy dog"}
            assert {results[i] for i in range(1, 16, 2)} == {"fox sleeps under the old tree"}
            assert _holders(pods, "llama") == _holders(pods, "llama-lora")
        finally:
            client.close()


def test_a_client_leaving_a_routed_stream_stops_the_pods_generation(
    etcd: EtcdServer,  # noqa: F811
    prefix: str,  # noqa: F811
    pods: list[RunningPod],
) -> None:
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        _register(router, "gpt2", "gpt2")
        call = router.v2.ModelStreamInfer(
            iter([_request("gpt2", "hello", max_tokens=120, ignore_eos=True, temperature=1)])
        )
        first = next(call)
        assert not first.error_message and first.infer_response.outputs
        (holder,) = [p for p in pods if p.plane.cache.is_loaded("gpt2")]
        engine = holder.plane.cache._entries["gpt2"].model.engine
        call.cancel()
        wait_until(lambda: engine.busy() == 0, what="the pod's generation to stop")
        assert engine.tokens_generated < 100  # of the 120 it was asked for


def test_200_first_requests_over_two_routers_make_one_load(
    etcd: EtcdServer,  # noqa: F811
    prefix: str,  # noqa: F811
    pods: list[RunningPod],
) -> None:
    with (
        running_router(etcd=etcd.url, etcd_prefix=prefix) as a,
        running_router(etcd=etcd.url, etcd_prefix=prefix) as b,
    ):
        _register(a, "llama", "llama")
        b.run(b.server.mirror.wait_for(lambda m: "llama" in m.models))
        request = pb.ModelInferRequest(model_name="llama")
        request.inputs.add(
            name="text_input", datatype="BYTES", shape=[1]
        ).contents.bytes_contents.append(b"hello world")
        request.parameters["max_tokens"].int64_param = 2
        request.parameters["temperature"].double_param = 0
        errors: list[BaseException] = []
        answers: list[bytes] = []
        barrier = threading.Barrier(200)

        def call(router) -> None:  # type: ignore[no-untyped-def]
            try:
                barrier.wait()
                answers.append(router.v2.ModelInfer(request, timeout=120).raw_output_contents[0])
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=call, args=((a, b)[i % 2],)) for i in range(200)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert set(answers) == {b"\x07\x00\x00\x00this is"}
        loads = sum(
            float(line.split()[-1])
            for p in pods
            for line in p.metrics_text().splitlines()
            if line.startswith("mesh_pod_load_seconds_count")
        )
        assert loads == 1
