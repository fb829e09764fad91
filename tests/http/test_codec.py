"""REST bodies <-> v2 protobuf: every datatype in JSON and binary, and every malformed body
refused with a message before anything is packed (mesh.http.codec)."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest

from mesh.errors import InvalidRequest
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.http import codec
from mesh.pod.codec import decode_request, encode_response
from mesh.pod.wire import message_of, request_of
from mesh.tensors import DATATYPES, Signature, TensorSpec

NUMERIC = [d for d in DATATYPES if d != "BYTES"]


def _sample(datatype: str) -> np.ndarray[Any, Any]:
    if datatype == "BYTES":
        return np.array([b"a", "é".encode(), b"", b"longer one"], dtype=object)
    if datatype == "BOOL":
        return np.array([True, False, True, True])
    dtype = DATATYPES[datatype]
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.array([info.min, 0, 1, info.max], dtype=dtype)
    return np.array([-1.5, 0.0, 0.25, 65504.0], dtype=dtype)


def _json_values(array: np.ndarray[Any, Any]) -> list[Any]:
    if array.dtype == object:
        return [v.decode() for v in array]
    return list(array.tolist())


def _binary(array: np.ndarray[Any, Any]) -> bytes:
    if array.dtype == object:
        return b"".join(struct.pack("<I", len(v)) + v for v in array)
    return array.tobytes()


def _signature(datatype: str) -> Signature:
    return Signature.of([TensorSpec("x", datatype, (-1,))], [TensorSpec("x", datatype, (-1,))])


def _through_the_pod(request: codec.RestRequest, datatype: str) -> pb.ModelInferResponse:
    """What a pod makes of the converted request: decode it, answer with the input as output."""
    neutral = request_of(request.message)  # as the pod's REST and gRPC edges convert it
    decoded = decode_request(neutral, _signature(datatype))
    return message_of(encode_response(neutral, "m", {"x": decoded.inputs["x"]}, ["x"]))


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_json_tensors_of_every_datatype_round_trip(datatype: str) -> None:
    array = _sample(datatype)
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": datatype, "shape": [4], "data": _json_values(array)}]}
    ).encode()
    request = codec.decode_infer_request(body, None, "m")
    response = _through_the_pod(request, datatype)
    data, headers = codec.encode_infer_response(response)
    assert headers["content-type"] == "application/json"
    out = json.loads(data)["outputs"][0]
    assert out["datatype"] == datatype and out["shape"] == [4]
    assert out["data"] == _json_values(array)


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_binary_tensors_of_every_datatype_round_trip(datatype: str) -> None:
    array = _sample(datatype)
    raw = _binary(array)
    header = json.dumps(
        {
            "inputs": [{"name": "x", "datatype": datatype, "shape": [4],
                        "parameters": {"binary_data_size": len(raw)}}],
            "outputs": [{"name": "x", "parameters": {"binary_data": True}}],
        }
    ).encode()  # fmt: skip
    request = codec.decode_infer_request(header + raw, str(len(header)), "m")
    assert request.message.raw_input_contents[0] == raw
    assert request.binary_outputs == {"x"}
    response = _through_the_pod(request, datatype)
    data, headers = codec.encode_infer_response(response, request.binary_outputs)
    n = int(headers[codec.HEADER_LENGTH])
    doc = json.loads(data[:n])
    assert doc["outputs"][0]["parameters"] == {"binary_data_size": len(raw)}
    assert "data" not in doc["outputs"][0]
    assert data[n:] == raw


def test_nested_data_is_row_major_and_fp16_carries_in_json() -> None:
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP16", "shape": [2, 2],
                     "data": [[1.0, 2.0], [3.0, 0.5]]}]}
    ).encode()  # fmt: skip
    message = codec.decode_infer_request(body, None, "m").message
    got = np.frombuffer(message.raw_input_contents[0], np.float16)
    np.testing.assert_array_equal(got, np.array([1, 2, 3, 0.5], np.float16))


def test_json_and_binary_inputs_mix_and_id_and_parameters_pass_through() -> None:
    raw = np.arange(3, dtype=np.int32).tobytes()
    header = json.dumps(
        {
            "id": "req-7",
            "parameters": {"priority": 3, "tag": "x", "flag": True, "ratio": 0.5},
            "inputs": [
                {"name": "a", "datatype": "INT32", "shape": [3],
                 "parameters": {"binary_data_size": len(raw)}},
                {"name": "b", "datatype": "FP64", "shape": [1], "data": [2.5],
                 "parameters": {"note": "kept"}},
            ],
        }
    ).encode()  # fmt: skip
    message = codec.decode_infer_request(header + raw, str(len(header)), "m", "2").message
    assert message.id == "req-7" and message.model_name == "m" and message.model_version == "2"
    assert codec.parameters_to_json(message.parameters) == {
        "priority": 3, "tag": "x", "flag": True, "ratio": 0.5,
    }  # fmt: skip
    assert list(message.raw_input_contents) == [raw, np.float64(2.5).tobytes()]
    assert "binary_data_size" not in message.inputs[0].parameters
    assert codec.parameters_to_json(message.inputs[1].parameters) == {"note": "kept"}


def test_binary_data_output_makes_every_output_binary_and_timeout_is_read() -> None:
    body = json.dumps(
        {"parameters": {"binary_data_output": True, "timeout": 2_500_000},
         "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    ).encode()  # fmt: skip
    request = codec.decode_infer_request(body, None, "m")
    assert request.all_binary and request.timeout == 2.5
    assert "binary_data_output" not in request.message.parameters
    response = _through_the_pod(request, "FP32")
    data, headers = codec.encode_infer_response(response, all_binary=True)
    assert headers["content-type"] == "application/octet-stream"
    assert data[int(headers[codec.HEADER_LENGTH]) :] == np.float32(1).tobytes()


def test_requested_outputs_travel_with_their_parameters_but_not_binary_data() -> None:
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
         "outputs": [{"name": "y", "parameters": {"binary_data": False, "classification": 2}}]}
    ).encode()  # fmt: skip
    message = codec.decode_infer_request(body, None, "m").message
    assert [o.name for o in message.outputs] == ["y"]
    assert codec.parameters_to_json(message.outputs[0].parameters) == {"classification": 2}


def _refused(body: bytes | dict[str, Any], header: str | None = None) -> str:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(InvalidRequest) as err:
        codec.decode_infer_request(data, header, "m")
    return str(err.value)


def _one(**tensor: Any) -> dict[str, Any]:
    base = {"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}
    base.update(tensor)
    return {"inputs": [{k: v for k, v in base.items() if v is not None}]}


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"\xff\xfe", "not valid JSON"),
        ({}, "non-empty list of inputs"),
        ({"inputs": []}, "non-empty list of inputs"),
        ({"inputs": [3]}, "must be an object"),
        (_one(name=""), "needs a name"),
        (_one(datatype="FP8"), "unknown datatype"),
        (_one(datatype=None), "unknown datatype"),
        (_one(shape=[-1]), "non-negative integers"),
        (_one(shape=[2.0]), "non-negative integers"),
        (_one(shape=[True]), "non-negative integers"),
        (_one(shape="2"), "non-negative integers"),
        (_one(data=[1, 2, 3]), "holds 3 elements, shape [2] needs 2"),
        (_one(shape=[10**12], data=[1]), "holds 1 elements"),
        (_one(data=None), "neither data nor binary_data_size"),
        (_one(data=["a", "b"]), "must be numbers"),
        (_one(data=[True, False]), "must be numbers"),
        (_one(datatype="INT8", data=[1, 200]), "out of range for INT8"),
        (_one(datatype="UINT32", data=[-1, 0]), "out of range for UINT32"),
        (_one(datatype="INT32", data=[1.5, 2]), "must be integers"),
        (_one(datatype="BOOL", data=[1, 0]), "true or false"),
        (_one(datatype="BYTES", data=[1, 2]), "must be strings"),
        (_one(datatype="BF16", data=[1, 2]), "BF16 can only be sent as binary"),
        (_one(data=[[1, [2]], 3]), "flat or nested evenly"),
        (_one(shape=[2, 2], data=[[1, 2], [3]]), "flat or nested evenly"),
        (_one(data=[1, None]), "must be numbers"),
        (_one(datatype="UINT64", data=[1, 2**64]), "out of range for UINT64"),
        (_one(datatype="INT64", data=[1, -(2**63) - 1]), "out of range for INT64"),
        ({"id": 5, **_one()}, "id must be a string"),
        ({"parameters": [], **_one()}, "parameters must be an object"),
        ({"parameters": {"p": [1]}, **_one()}, "must be a boolean, number or string"),
        ({"parameters": {"timeout": "soon"}, **_one()}, "timeout must be"),
        ({"parameters": {"binary_data_output": 1}, **_one()}, "binary_data_output must be"),
        ({"outputs": {"name": "y"}, **_one()}, "outputs must be a list"),
        ({"outputs": [{"nom": "y"}], **_one()}, "each requested output needs a name"),
        (
            {"outputs": [{"name": "y", "parameters": {"binary_data": "yes"}}], **_one()},
            "binary_data must be a boolean",
        ),
    ],
)
def test_malformed_json_bodies_are_refused_with_a_message(body: Any, says: str) -> None:
    assert says in _refused(body)


def _binary_body(size: int, payload: bytes, datatype: str = "FP32", shape: Any = None) -> bytes:
    header = json.dumps(
        {"inputs": [{"name": "x", "datatype": datatype, "shape": shape or [2],
                     "parameters": {"binary_data_size": size}}]}
    ).encode()  # fmt: skip
    return header + payload


def _header_len(body: bytes) -> str:
    return str(body.index(b"}]}") + 3)


@pytest.mark.parametrize(
    ("size", "payload", "says"),
    [
        (8, b"\0" * 4, "binary section after the"),  # the body is shorter than the sizes say
        (8, b"\0" * 12, "binary section after the"),  # bytes left over
        (4, b"\0" * 4, "needs 8 bytes"),  # the size contradicts the shape
        (-1, b"", "non-negative integer"),
        (True, b"", "non-negative integer"),
    ],
)
def test_lying_binary_headers_are_refused(size: Any, payload: bytes, says: str) -> None:
    body = _binary_body(size, payload)
    assert says in _refused(body, _header_len(body))


def test_a_header_length_past_the_body_or_not_a_number_is_refused() -> None:
    body = _binary_body(8, b"\0" * 8)
    assert "but the body has" in _refused(body, str(len(body) + 1))
    assert "must be an integer" in _refused(body, "twelve")
    assert "but the body has" in _refused(body, "-3")


def test_binary_bytes_framing_is_checked() -> None:
    good = struct.pack("<I", 1) + b"a" + struct.pack("<I", 0)
    body = _binary_body(len(good), good, "BYTES")
    message = codec.decode_infer_request(body, _header_len(body), "m").message
    assert message.raw_input_contents[0] == good
    lying = struct.pack("<I", 50) + b"a" + struct.pack("<I", 0)
    body = _binary_body(len(lying), lying, "BYTES")
    assert "runs past its data" in _refused(body, _header_len(body))
    body = _binary_body(3, b"abc", "BYTES")
    assert "cannot hold 2 BYTES elements" in _refused(body, _header_len(body))


def test_a_huge_shape_with_a_small_binary_size_is_refused_before_allocating() -> None:
    body = _binary_body(8, b"\0" * 8, shape=[2**40, 2**20])
    assert "needs" in _refused(body, _header_len(body))


def test_outputs_json_cannot_carry_are_refused_with_advice() -> None:
    response = pb.ModelInferResponse(model_name="m")
    response.outputs.add(name="s", datatype="BYTES", shape=[1])
    response.raw_output_contents.append(struct.pack("<I", 2) + b"\xff\xfe")
    with pytest.raises(InvalidRequest, match="binary_data"):
        codec.encode_infer_response(response)
    data, _ = codec.encode_infer_response(response, ["s"])
    assert data.endswith(b"\xff\xfe")


def test_typed_contents_in_a_response_are_read_too() -> None:
    response = pb.ModelInferResponse(model_name="m", id="z")
    tensor = response.outputs.add(name="y", datatype="INT64", shape=[2])
    tensor.contents.int64_contents.extend([5, -6])
    data, _ = codec.encode_infer_response(response, model_name="alias")
    doc = json.loads(data)
    assert doc["model_name"] == "alias" and doc["id"] == "z"
    assert doc["outputs"][0]["data"] == [5, -6]
