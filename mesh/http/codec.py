"""KServe v2 REST bodies to v2 protobuf messages and back: JSON tensors and binary tensors.

No HTTP framework here: bytes and headers in, `ModelInferRequest` out; `ModelInferResponse` in,
bytes and headers out. The REST front of the router and of the pod share it, so a REST request
takes exactly the gRPC path once converted.

    request = decode_infer_request(body, header_length, "fraud")   # -> RestRequest
    raw = await backend.infer(request.message, ...)                # the v2 protobuf path
    body, headers = encode_infer_response(response, request.binary_outputs, ...)

The binary tensor extension: with an `Inference-Header-Content-Length: N` header, the first N
bytes of the body are the JSON header and the rest the tensors' bytes, one after another in the
order of the inputs that say `"parameters": {"binary_data_size": S}`. BYTES elements are each a
4-byte little-endian length and the data, as in `raw_input_contents`. Outputs are sent binary
when their `"parameters": {"binary_data": true}` says so, or for every output when the request's
`"parameters": {"binary_data_output": true}` does.

Every input travels to the pod as `raw_input_contents` (JSON values are packed with numpy), so
JSON and binary inputs can be mixed in one request. Every check that a shape implies happens
before anything the shape implies is allocated: element counts against `data`, byte sizes
against `binary_data_size`, and the sizes against the body's length. Each failure is an
InvalidRequest naming the tensor, which the HTTP layer answers with 400.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mesh.errors import InvalidRequest
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.tensors import DATATYPES

HEADER_LENGTH = "inference-header-content-length"
_LEN = struct.Struct("<I")
# Datatypes with a fixed element size: numpy's, and BF16 (binary only: JSON has no way to say
# which float a number is meant to round to, and numpy has no bfloat16).
_ITEMSIZE: dict[str, int] = {
    **{name: dt.itemsize for name, dt in DATATYPES.items() if name != "BYTES"},
    "BF16": 2,
}
# Parameters that belong to the REST encoding and are not passed on to the model.
_BINARY_SIZE = "binary_data_size"
_BINARY_OUTPUT = "binary_data_output"
_BINARY = "binary_data"
# Triton's request-level timeout in microseconds, which tritonclient.http sends.
_TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class RestRequest:
    """A decoded REST inference request: the protobuf message and what the answer needs."""

    message: pb.ModelInferRequest
    # Names of the outputs to send as binary; `all_binary` for binary_data_output.
    binary_outputs: frozenset[str]
    all_binary: bool
    # The request's own deadline (Triton's `timeout` parameter), in seconds.
    timeout: float | None


# -- parameters ----------------------------------------------------------------------------------


def _set_parameter(target: Any, key: str, value: Any, where: str) -> None:
    param = target[key]
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        if -(2**63) <= value < 2**63:
            param.int64_param = value
        elif 0 <= value < 2**64:
            param.uint64_param = value
        else:
            raise InvalidRequest(f"{where}: parameter {key!r} is out of the 64-bit range")
    elif isinstance(value, float):
        param.double_param = value
    elif isinstance(value, str):
        param.string_param = value
    else:
        raise InvalidRequest(
            f"{where}: parameter {key!r} must be a boolean, number or string, "
            f"not {type(value).__name__}"
        )


def _parameters(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidRequest(f"{where}: parameters must be an object")
    return raw


def parameters_to_json(params: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    """Protobuf parameters as the JSON object a REST client sees."""
    out: dict[str, Any] = {}
    for key, param in params.items():
        which = param.WhichOneof("parameter_choice")
        if which is not None:
            out[key] = getattr(param, which)
    return out


# -- requests ------------------------------------------------------------------------------------


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary section of a body (the section is empty without one)."""
    view = memoryview(body)
    if header_length is None:
        return body, view[len(view) :]
    try:
        n = int(header_length.strip())
    except ValueError:
        raise InvalidRequest(
            f"Inference-Header-Content-Length must be an integer, got {header_length!r}"
        ) from None
    if n < 0 or n > len(body):
        raise InvalidRequest(
            f"Inference-Header-Content-Length is {n}, but the body has {len(body)} bytes"
        )
    return bytes(view[:n]), view[n:]


def parse_json(data: bytes, what: str = "request") -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"the {what} body is not valid JSON: {exc}") from None


def decode_infer_request(
    body: bytes, header_length: str | None, model_name: str, model_version: str = ""
) -> RestRequest:
    """A v2 REST inference body as a ModelInferRequest for `model_name`."""
    header, binary = split_body(body, header_length)
    doc = parse_json(header)
    if not isinstance(doc, dict):
        raise InvalidRequest("the request body must be a JSON object")
    message = pb.ModelInferRequest(model_name=model_name, model_version=model_version)
    request_id = doc.get("id")
    if request_id is not None:
        if not isinstance(request_id, str):
            raise InvalidRequest("the request id must be a string")
        message.id = request_id
    params = _parameters(doc.get("parameters"), "request")
    all_binary = False
    timeout = None
    for key, value in params.items():
        if key == _BINARY_OUTPUT:
            if not isinstance(value, bool):
                raise InvalidRequest("parameter binary_data_output must be a boolean")
            all_binary = value
            continue
        if key == _TIMEOUT:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidRequest("parameter timeout must be a non-negative integer (µs)")
            timeout = value / 1e6 if value else None
        _set_parameter(message.parameters, key, value, "request")

    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidRequest("the request needs a non-empty list of inputs")
    # First pass: every check, and the binary section's layout, before anything is packed.
    plan = [_check_input(raw, i) for i, raw in enumerate(inputs)]
    wanted = sum(size for _, _, _, size in plan if size is not None)
    if wanted != len(binary):
        raise InvalidRequest(
            f"the inputs' binary_data_size add up to {wanted} bytes, but the binary section "
            f"after the {len(header)}-byte JSON header has {len(binary)}"
        )
    offset = 0
    for raw, (name, datatype, shape, size) in zip(inputs, plan, strict=True):
        tensor = message.inputs.add(name=name, datatype=datatype, shape=shape)
        for key, value in _parameters(raw.get("parameters"), f"input {name!r}").items():
            if key != _BINARY_SIZE:
                _set_parameter(tensor.parameters, key, value, f"input {name!r}")
        if size is not None:
            chunk = binary[offset : offset + size]
            offset += size
            if datatype == "BYTES":
                _check_bytes_framing(chunk, math.prod(shape), name)
            message.raw_input_contents.append(bytes(chunk))
        else:
            message.raw_input_contents.append(_pack_json(raw, name, datatype, shape))

    outputs = doc.get("outputs")
    binary_outputs: set[str] = set()
    if outputs is not None:
        if not isinstance(outputs, list):
            raise InvalidRequest("outputs must be a list")
        for raw in outputs:
            if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
                raise InvalidRequest("each requested output needs a name")
            name = raw["name"]
            out = message.outputs.add(name=name)
            for key, value in _parameters(raw.get("parameters"), f"output {name!r}").items():
                if key == _BINARY:
                    if not isinstance(value, bool):
                        raise InvalidRequest(f"output {name!r}: binary_data must be a boolean")
                    if value:
                        binary_outputs.add(name)
                    continue
                _set_parameter(out.parameters, key, value, f"output {name!r}")
    return RestRequest(message, frozenset(binary_outputs), all_binary, timeout)


def _check_input(raw: Any, index: int) -> tuple[str, str, list[int], int | None]:
    """(name, datatype, shape, binary size or None) of one input, every field checked."""
    if not isinstance(raw, dict):
        raise InvalidRequest(f"input {index} must be an object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"input {index} needs a name")
    datatype = raw.get("datatype")
    if not isinstance(datatype, str) or (datatype not in DATATYPES and datatype != "BF16"):
        raise InvalidRequest(f"input {name!r} has unknown datatype {datatype!r}")
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**63 for d in shape
    ):
        raise InvalidRequest(f"input {name!r}: shape must be a list of non-negative integers")
    count = math.prod(shape)
    params = _parameters(raw.get("parameters"), f"input {name!r}")
    size = params.get(_BINARY_SIZE)
    if size is None:
        if "data" not in raw:
            raise InvalidRequest(f"input {name!r} has neither data nor binary_data_size")
        if datatype == "BF16":
            raise InvalidRequest(f"input {name!r}: BF16 can only be sent as binary data")
        return name, datatype, shape, None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidRequest(f"input {name!r}: binary_data_size must be a non-negative integer")
    if "data" in raw:
        raise InvalidRequest(f"input {name!r} has both data and binary_data_size")
    if datatype != "BYTES":
        want = count * _ITEMSIZE[datatype]
        if size != want:
            raise InvalidRequest(
                f"input {name!r}: binary_data_size is {size}, but shape {shape} of {datatype} "
                f"needs {want} bytes"
            )
    elif size < 4 * count:
        raise InvalidRequest(
            f"input {name!r}: binary_data_size {size} cannot hold {count} BYTES elements"
        )
    return name, datatype, shape, size


def _check_bytes_framing(chunk: memoryview, count: int, name: str) -> None:
    offset = 0
    for i in range(count):
        if offset + 4 > len(chunk):
            raise InvalidRequest(f"input {name!r}: binary BYTES end after {i} of {count} elements")
        (length,) = _LEN.unpack_from(chunk, offset)
        offset += 4 + length
        if offset > len(chunk):
            raise InvalidRequest(f"input {name!r}: BYTES element {i} runs past its data")
    if offset != len(chunk):
        raise InvalidRequest(
            f"input {name!r}: {len(chunk) - offset} bytes left over after {count} BYTES elements"
        )


def _flatten(data: Any, name: str) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(item, list) for item in data):
        return data
    flat: list[Any] = []
    stack: list[Iterable[Any]] = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _pack_json(raw: Mapping[str, Any], name: str, datatype: str, shape: Sequence[int]) -> bytes:
    """An input's JSON `data` (flat or nested, row-major) as raw contents."""
    data = raw["data"]
    count = math.prod(shape)
    if datatype == "BYTES":
        strings = _flatten(data, name)
        if len(strings) != count:
            raise InvalidRequest(
                f"input {name!r}: data holds {len(strings)} elements, shape {list(shape)} needs "
                f"{count}"
            )
        parts = []
        for value in strings:
            if isinstance(value, str):
                encoded = value.encode()
            else:
                raise InvalidRequest(f"input {name!r}: BYTES elements must be strings in JSON")
            parts.append(_LEN.pack(len(encoded)))
            parts.append(encoded)
        return b"".join(parts)
    # numpy reads the nesting and tells the kind of every element at once (a per-element check
    # in Python cost about 1 µs an element): bool, integer, float, or anything else.
    try:
        array = np.array(data if isinstance(data, list) else [data])
    except (ValueError, OverflowError, TypeError):
        raise InvalidRequest(
            f"input {name!r}: data must be a list of {datatype} values, flat or nested evenly"
        ) from None
    if array.size != count:
        raise InvalidRequest(
            f"input {name!r}: data holds {array.size} elements, shape {list(shape)} needs {count}"
        )
    flat: np.ndarray[Any, Any] = array.reshape(-1)
    dtype = DATATYPES[datatype]
    if not count:
        return b""
    kind = array.dtype.kind
    if datatype == "BOOL":
        if kind != "b":
            raise InvalidRequest(f"input {name!r}: BOOL elements must be true or false")
        return bytes(flat.tobytes())
    if kind not in "iuf":
        items = flat.tolist()
        if kind == "O" and all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            # Integers past int64 (UINT64's upper half, or out of every range).
            if dtype.kind in "iu":
                info = np.iinfo(dtype)
                if info.min <= min(items) and max(items) <= info.max:
                    return np.array(items, dtype=dtype).tobytes()
            raise InvalidRequest(f"input {name!r}: a value is out of range for {datatype}")
        raise InvalidRequest(f"input {name!r}: {datatype} elements must be numbers")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if kind == "f":
            # Floats, or integers past int64 that numpy read as floats (UINT64's upper half):
            # only the JSON values themselves tell, exactly.
            items = _flatten(data, name)
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
                raise InvalidRequest(f"input {name!r}: {datatype} elements must be integers")
            if min(items) < info.min or max(items) > info.max:
                raise InvalidRequest(f"input {name!r}: a value is out of range for {datatype}")
            return np.array(items, dtype=dtype).tobytes()
        if flat.min() < info.min or flat.max() > info.max:
            raise InvalidRequest(f"input {name!r}: a value is out of range for {datatype}")
    return bytes(flat.astype(dtype, copy=False).tobytes())


# -- responses -----------------------------------------------------------------------------------


def encode_infer_response(
    response: pb.ModelInferResponse,
    binary_outputs: Iterable[str] = (),
    all_binary: bool = False,
    model_name: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The REST body and headers of a response: JSON, with binary outputs after it if asked."""
    wanted = set(binary_outputs)
    doc: dict[str, Any] = {"model_name": model_name or response.model_name}
    if response.model_version:
        doc["model_version"] = response.model_version
    if response.id:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = parameters_to_json(response.parameters)
    raw = response.raw_output_contents
    outputs = []
    chunks: list[bytes] = []
    for i, tensor in enumerate(response.outputs):
        out: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        params = parameters_to_json(tensor.parameters)
        data = raw[i] if i < len(raw) else _typed_to_raw(tensor)
        if all_binary or tensor.name in wanted:
            params[_BINARY_SIZE] = len(data)
            chunks.append(data)
        else:
            out["data"] = _raw_to_json(data, tensor.name, tensor.datatype)
        if params:
            out["parameters"] = params
        outputs.append(out)
    doc["outputs"] = outputs
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not chunks:
        return header, {"content-type": "application/json"}
    return b"".join([header, *chunks]), {
        "content-type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }


def _raw_to_json(data: bytes, name: str, datatype: str) -> list[Any]:
    if datatype == "BYTES":
        values = []
        view = memoryview(data)
        offset = 0
        while offset + 4 <= len(view):
            (length,) = _LEN.unpack_from(view, offset)
            offset += 4
            item = bytes(view[offset : offset + length])
            offset += length
            try:
                values.append(item.decode())
            except UnicodeDecodeError:
                raise InvalidRequest(
                    f"output {name!r} holds bytes that are not UTF-8, which JSON cannot carry: "
                    "ask for it with binary_data"
                ) from None
        return values
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise InvalidRequest(
            f"output {name!r} is {datatype}, which JSON cannot carry: ask for it with binary_data"
        )
    result: list[Any] = np.frombuffer(data, dtype=dtype).tolist()
    return result


def _typed_to_raw(tensor: pb.ModelInferResponse.InferOutputTensor) -> bytes:
    """An output sent as typed contents (not by mesh pods, but legal), as raw bytes."""
    c = tensor.contents
    if tensor.datatype == "BYTES":
        return b"".join(_LEN.pack(len(v)) + v for v in c.bytes_contents)
    field: Any = {
        "BOOL": c.bool_contents, "INT8": c.int_contents, "INT16": c.int_contents,
        "INT32": c.int_contents, "INT64": c.int64_contents, "UINT8": c.uint_contents,
        "UINT16": c.uint_contents, "UINT32": c.uint_contents, "UINT64": c.uint64_contents,
        "FP32": c.fp32_contents, "FP64": c.fp64_contents,
    }.get(tensor.datatype)  # fmt: skip
    if field is None:
        return b""
    return np.array(list(field), dtype=DATATYPES[tensor.datatype]).tobytes()


# -- metadata and the rest -----------------------------------------------------------------------


def model_metadata_to_json(response: pb.ModelMetadataResponse) -> dict[str, Any]:
    def tensors(items: Iterable[Any]) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

    return {
        "name": response.name,
        "versions": list(response.versions),
        "platform": response.platform,
        "inputs": tensors(response.inputs),
        "outputs": tensors(response.outputs),
    }


def dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()
