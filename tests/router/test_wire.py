"""The router reads a request's model name from its bytes, whatever the request carries."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mesh.errors import InvalidRequest
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.router.wire import _scan, model_name_of, name_from_headers


@given(
    name=st.text(max_size=300),
    version=st.text(max_size=10),
    raw=st.lists(st.binary(max_size=2000), max_size=3),
    shape=st.lists(st.integers(-(2**40), 2**40), max_size=4),
)
def test_model_name_is_read_from_any_request(
    name: str, version: str, raw: list[bytes], shape: list[int]
) -> None:
    request = pb.ModelInferRequest(model_version=version, id="x", raw_input_contents=raw)
    request.inputs.add(name="in", datatype="FP32", shape=shape)
    request.parameters["p"].double_param = 1.5
    request.model_name = name
    assert model_name_of(request.SerializeToString()) == name


def test_model_name_after_other_fields() -> None:
    tail = pb.ModelInferRequest(model_name="late").SerializeToString()
    head = pb.ModelInferRequest(id="first", raw_input_contents=[b"\x0a" * 10]).SerializeToString()
    assert model_name_of(head + tail) == "late"  # fields may come in any order on the wire


@pytest.mark.parametrize(
    "data", [b"\x0a\x05ab", b"\x0a", b"\xff\xff\xff", b"\x0b", b"\x0a\x01\xff", b"\x0a\x81"]
)
def test_malformed_bytes_are_invalid_argument(data: bytes) -> None:
    with pytest.raises(InvalidRequest):
        model_name_of(data)


@given(head=st.sampled_from([b"", b"\x0a", b"\x0a\x03", b"\x0a\x7f", b"\x0a\x80\x01"]),
       data=st.binary(max_size=200))  # fmt: skip
@example(head=b"\x0a\x80\x01", data=b"n" * 128)  # a two-byte length: 128
def test_the_fast_path_reads_what_the_scan_reads(head: bytes, data: bytes) -> None:
    """model_name_of's shortcut for a name first (most requests) answers as the full scan,
    name or error, on any bytes."""
    data = head + data
    try:
        expected: str | type[Exception] = _scan(data)
    except InvalidRequest:
        expected = InvalidRequest
    try:
        found: str | type[Exception] = model_name_of(data)
    except InvalidRequest:
        found = InvalidRequest
    assert found == expected


def test_headers_win_and_vmodel_first() -> None:
    assert name_from_headers([("mm-model-id", "m"), ("mm-vmodel-id", "v")]) == ("v", True)
    assert name_from_headers([("mm-model-id", b"m")]) == ("m", False)
    assert name_from_headers([("other", "x")]) == ("", False)
