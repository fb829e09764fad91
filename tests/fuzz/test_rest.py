"""Fuzzing the v2 REST body parser at the router and at the pod's REST port: mutated JSON,
lying binary-header lengths and raw bytes. Every answer is 2xx or 4xx, never a 5xx for what the
client sent; nothing hangs and the servers stay up."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import RunningPod, RunningRouter, infer_request

MODELS = ["mlp", "xgb", "identity", "nope"]


def _json_seeds() -> list[bytes]:
    mlp = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                       "data": [0.5] * 64}]}  # fmt: skip
    ident = {"inputs": [{"name": "in_BYTES", "shape": [2], "datatype": "BYTES",
                         "data": ["a", "b"]}], "outputs": [{"name": "out_BYTES"}]}  # fmt: skip
    binary = {"inputs": [{"name": "in_INT32", "shape": [2], "datatype": "INT32",
                          "parameters": {"binary_data_size": 8}}]}  # fmt: skip
    return [json.dumps(mlp).encode(), json.dumps(ident).encode(), json.dumps(binary).encode()]


SEEDS = _json_seeds()


@st.composite
def body(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        op = draw(st.sampled_from(["byte", "cut", "insert"]))
        if op == "byte" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    headers = {"content-type": "application/json"}
    if draw(st.booleans()):  # the binary extension, with a header length that may lie
        header_len = draw(
            st.one_of(
                st.just(len(data)),
                st.integers(-5, 2**40),
                st.text(alphabet="0123456789x-.", min_size=1, max_size=4),
            )
        )
        headers["inference-header-content-length"] = str(header_len)
        headers["content-type"] = "application/octet-stream"
        data += draw(st.binary(max_size=64))
    return bytes(data), headers


WIRE = st.one_of(body(), st.tuples(st.binary(max_size=256), st.just({})))


def _fuzz(mesh: tuple[RunningPod, RunningRouter], examples: int) -> None:
    pod, router = mesh
    assert router.rest, "the router serves no REST port"
    assert pod.server.rest_port, "the pod serves no REST port"
    targets = [router.rest, f"127.0.0.1:{pod.server.rest_port}"]
    with httpx.Client(timeout=20) as client:

        @settings(
            max_examples=examples, deadline=None, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )  # fmt: skip
        @given(wire=WIRE, model=st.sampled_from(MODELS))
        def each(wire: tuple[bytes, dict[str, str]], model: str) -> None:
            data, headers = wire
            for target in targets:
                response = client.post(
                    f"http://{target}/v2/models/{model}/infer", content=data, headers=headers
                )
                assert response.status_code < 500, (response.status_code, response.text, data)

        each()
    x = np.ones((1, 64), np.float32)
    assert router.v2.ModelInfer(infer_request("mlp", input=x), timeout=20).outputs


def test_fuzzed_rest_bodies_get_client_errors(mesh: tuple[RunningPod, RunningRouter]) -> None:
    _fuzz(mesh, 1_000)


@pytest.mark.slow
def test_fuzzed_rest_bodies_at_length(mesh: tuple[RunningPod, RunningRouter]) -> None:
    _fuzz(mesh, 10_000)
