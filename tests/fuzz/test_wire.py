"""Fuzzing the v2 wire at the pod and at the router: mutated bytes, absurd shapes, lying BYTES
lengths, huge maps. Every answer is a defined status for a client's mistake, never UNKNOWN or
INTERNAL; nothing hangs (every call has a deadline) and both servers stay up."""

from __future__ import annotations

import struct

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.gen import grpc_predict_v2_pb2 as pb
from tests.helpers import RunningPod, RunningRouter, infer_request

INFER = "/inference.GRPCInferenceService/ModelInfer"
# What a client's mistake may be answered with. OK: mutated bytes can still be a valid request.
DEFINED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
DATATYPES = ["BOOL", "UINT8", "INT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES", "BF16"]


def _seeds() -> list[bytes]:
    x = np.ones((2, 64), np.float32)
    seeds = [
        infer_request("mlp", input=x).SerializeToString(),
        infer_request("xgb", input__0=x).SerializeToString(),
        infer_request("identity", in_INT32=np.arange(5, dtype=np.int32)).SerializeToString(),
    ]
    typed = pb.ModelInferRequest(model_name="identity")
    t = typed.inputs.add(name="in_BYTES", datatype="BYTES", shape=[2])
    t.contents.bytes_contents.extend([b"ab", b"c"])
    seeds.append(typed.SerializeToString())
    raw = pb.ModelInferRequest(model_name="identity")
    raw.inputs.add(name="in_BYTES", datatype="BYTES", shape=[2])
    raw.raw_input_contents.append(struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1) + b"c")
    seeds.append(raw.SerializeToString())
    return seeds


SEEDS = _seeds()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "dup", "byte"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "dup":
            data[at:at] = data[at : at + draw(st.integers(1, 32))]
    return bytes(data)


def _lying_bytes(draw: st.DrawFn) -> bytes:
    """BYTES raw contents whose 4-byte length prefixes may lie about what follows."""
    out = b""
    for _ in range(draw(st.integers(0, 3))):
        payload = draw(st.binary(max_size=8))
        length = draw(st.one_of(st.just(len(payload)), st.integers(0, 2**32 - 1)))
        out += struct.pack("<I", length) + payload
    return out + draw(st.binary(max_size=3))


@st.composite
def structured(draw: st.DrawFn) -> bytes:
    request = pb.ModelInferRequest(
        model_name=draw(st.sampled_from(["mlp", "xgb", "identity", ""]) | st.text(max_size=8)),
        id=draw(st.text(max_size=8)),
    )
    for _ in range(draw(st.integers(0, 3))):
        dt = draw(st.sampled_from(DATATYPES) | st.text(max_size=5))
        name = draw(st.sampled_from(["input", "input__0", f"in_{dt}", "in_INT32", "in_BYTES", ""]))
        shape = draw(
            st.lists(st.one_of(st.integers(-2, 70), st.integers(-(2**63), 2**63 - 1)), max_size=6)
        )
        tensor = request.inputs.add(name=name, datatype=dt, shape=shape)
        kind = draw(st.sampled_from(["raw", "typed", "none"]))
        if kind == "raw":
            request.raw_input_contents.append(
                _lying_bytes(draw) if dt == "BYTES" else draw(st.binary(max_size=600))
            )
        elif kind == "typed":
            values = draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=70))
            field = draw(st.sampled_from(["int_contents", "fp32_contents", "bytes_contents"]))
            if field == "bytes_contents":
                tensor.contents.bytes_contents.extend(str(v).encode() for v in values)
            elif field == "fp32_contents":
                tensor.contents.fp32_contents.extend(float(v) for v in values)
            else:
                tensor.contents.int_contents.extend(values)
        if draw(st.booleans()):
            tensor.parameters["binary_data_size"].int64_param = draw(st.integers(-5, 2**40))
    if draw(st.booleans()):  # a huge parameter map
        for i in range(draw(st.integers(0, 5000))):
            request.parameters[f"p{i}"].string_param = "x"
    for _ in range(draw(st.integers(0, 2))):
        request.outputs.add(name=draw(st.sampled_from(["output", "out_INT32", "nope", ""])))
    return request.SerializeToString()


WIRE = st.one_of(mutated(), structured(), st.binary(max_size=256))


def _status(channel: grpc.Channel, data: bytes) -> grpc.StatusCode:
    call = channel.unary_unary(INFER)
    code, details = grpc.StatusCode.OK, ""
    try:
        call(data, timeout=20)
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details()
    assert code in DEFINED, f"{code.name}: {details} for {data[:200]!r}"
    return code


def _fuzz(mesh: tuple[RunningPod, RunningRouter], examples: int) -> None:
    pod, router = mesh

    @settings(
        max_examples=examples, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )  # fmt: skip
    @given(data=WIRE)
    def both(data: bytes) -> None:
        _status(pod.channel, data)
        _status(router.channel, data)

    both()
    # Still serving, and still right.
    x = np.ones((1, 64), np.float32)
    for target in (pod, router):
        assert target.v2.ModelInfer(infer_request("mlp", input=x), timeout=20).outputs


def test_fuzzed_requests_get_defined_statuses(mesh: tuple[RunningPod, RunningRouter]) -> None:
    _fuzz(mesh, 1_000)


@pytest.mark.slow
def test_fuzzed_requests_get_defined_statuses_at_length(
    mesh: tuple[RunningPod, RunningRouter],
) -> None:
    _fuzz(mesh, 10_000)
