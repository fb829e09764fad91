"""Decode v2 inference requests into numpy arrays and encode results, checking sizes first.

It speaks mesh.inference's protocol-neutral objects; the protocols convert at their edges
(mesh.pod.wire for protobuf). The raw contents it views are the message's own bytes.

Every check happens before any data is decoded, and each failure is an InvalidRequest whose
message names the tensor. Raw inputs become numpy views of the request's bytes (no copy);
typed `contents` are converted, which is the slower path the protocol accepts for convenience.
Outputs always travel as `raw_output_contents`.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mesh.errors import InvalidRequest
from mesh.inference import InferOutput, InferRequest, InferResponse
from mesh.tensors import DATATYPES, Signature, datatype_of

# The typed-contents field that carries each datatype (FP16 and BF16 travel raw only).
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_ALL_CONTENTS = tuple(sorted(set(CONTENTS_FIELD.values())))
_LEN = struct.Struct("<I")

# Output parameters that ask for something this server does not do.
_UNSUPPORTED_OUTPUT_PARAMETERS = ("classification",)


@dataclass(frozen=True, slots=True)
class DecodedRequest:
    inputs: dict[str, np.ndarray[Any, Any]]
    outputs: tuple[str, ...]


def decode_request(request: InferRequest, signature: Signature) -> DecodedRequest:
    """Check `request` against `signature`, then view its tensors as numpy arrays."""
    inputs = request.inputs
    raw = request.raw
    if raw and len(raw) != len(inputs):
        raise InvalidRequest(
            f"raw_input_contents has {len(raw)} entries but the request has {len(inputs)} "
            "inputs; when raw contents are used, every input must have one"
        )
    specs = {s.name: s for s in signature.inputs}
    seen: set[str] = set()
    for tensor in inputs:
        if tensor.name not in specs:
            raise InvalidRequest(f"unknown input {tensor.name!r}; the model takes {sorted(specs)}")
        if tensor.name in seen:
            raise InvalidRequest(f"input {tensor.name!r} appears more than once")
        seen.add(tensor.name)
    missing = [name for name in specs if name not in seen]
    if missing:
        raise InvalidRequest(f"missing inputs {missing}; the model takes {sorted(specs)}")

    # First pass: every check, no decoding.
    counts = []
    for i, tensor in enumerate(inputs):
        spec = specs[tensor.name]
        name = tensor.name
        if tensor.datatype != spec.datatype:
            raise InvalidRequest(
                f"input {name!r} has datatype {tensor.datatype!r}, the model expects "
                f"{spec.datatype!r}"
            )
        shape = tuple(tensor.shape)
        if any(d < 0 for d in shape):
            raise InvalidRequest(f"input {name!r} has a negative dimension in shape {list(shape)}")
        if not spec.accepts_shape(shape):
            raise InvalidRequest(
                f"input {name!r} has shape {list(shape)}, the model expects {list(spec.shape)} "
                "(-1: any size)"
            )
        count = _element_count(shape)
        if raw:
            if tensor.contents:
                raise InvalidRequest(
                    f"input {name!r} has both typed contents and raw_input_contents"
                )
            if spec.datatype != "BYTES":
                want = count * DATATYPES[spec.datatype].itemsize
                if len(raw[i]) != want:
                    raise InvalidRequest(
                        f"input {name!r}: raw contents are {len(raw[i])} bytes, but shape "
                        f"{list(shape)} of {spec.datatype} needs {want}"
                    )
        else:
            field = CONTENTS_FIELD.get(spec.datatype)
            if field is None:
                raise InvalidRequest(
                    f"input {name!r}: {spec.datatype} has no typed contents field; send it in "
                    "raw_input_contents"
                )
            for other in _ALL_CONTENTS:
                if other != field and len(tensor.contents.get(other, ())):
                    raise InvalidRequest(
                        f"input {name!r} of {spec.datatype} carries {other}; expected {field}"
                    )
            got = len(tensor.contents.get(field, ()))
            if got != count:
                raise InvalidRequest(
                    f"input {name!r}: {field} holds {got} elements, shape {list(shape)} needs "
                    f"{count}"
                )
        counts.append(count)

    outputs = _requested_outputs(request, signature)

    # Second pass: decode.
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    for i, tensor in enumerate(inputs):
        dtype = DATATYPES[tensor.datatype]
        shape = tuple(tensor.shape)
        if raw:
            if tensor.datatype == "BYTES":
                array = _decode_bytes(raw[i], counts[i], tensor.name).reshape(shape)
            else:
                array = np.frombuffer(raw[i], dtype=dtype).reshape(shape)
        else:
            values = tensor.contents.get(CONTENTS_FIELD[tensor.datatype], ())
            if tensor.datatype == "BYTES":
                array = np.empty(counts[i], dtype=object)
                array[:] = list(values)
                array = array.reshape(shape)
            else:
                array = _typed_to_array(values, dtype, tensor.name).reshape(shape)
        arrays[tensor.name] = array
    return DecodedRequest(arrays, outputs)


def _element_count(shape: Sequence[int]) -> int:
    count = 1
    for d in shape:
        count *= d
    return count


def _typed_to_array(values: Any, dtype: np.dtype[Any], name: str) -> np.ndarray[Any, Any]:
    # int_contents carries INT8/INT16 as int32 and uint_contents UINT8/UINT16 as uint32: a value
    # out of the declared type's range is a client error, not something to wrap silently.
    if dtype.kind in "iu" and dtype.itemsize < 4:
        wide = np.array(values, dtype=np.int64)
        info = np.iinfo(dtype)
        if wide.size and (wide.min() < info.min or wide.max() > info.max):
            raise InvalidRequest(f"input {name!r}: a value is out of range for {dtype.name}")
        return wide.astype(dtype)
    return np.array(values, dtype=dtype)


def _decode_bytes(buffer: bytes, count: int, name: str) -> np.ndarray[Any, Any]:
    """Split a raw BYTES tensor: each element is a 4-byte little-endian length, then the data."""
    out = np.empty(count, dtype=object)
    view = memoryview(buffer)
    offset = 0
    for i in range(count):
        if offset + 4 > len(view):
            raise InvalidRequest(
                f"input {name!r}: raw BYTES contents end after {i} of {count} elements"
            )
        (length,) = _LEN.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidRequest(
                f"input {name!r}: BYTES element {i} claims {length} bytes, only "
                f"{len(view) - offset} remain"
            )
        out[i] = bytes(view[offset : offset + length])
        offset += length
    if offset != len(view):
        raise InvalidRequest(
            f"input {name!r}: {len(view) - offset} bytes left over after {count} BYTES elements"
        )
    return out


def _requested_outputs(request: InferRequest, signature: Signature) -> tuple[str, ...]:
    known = [s.name for s in signature.outputs]
    if not request.outputs:
        return tuple(known)
    names: list[str] = []
    for out in request.outputs:
        if out.name not in known:
            raise InvalidRequest(f"unknown output {out.name!r}; the model has {known}")
        for param in _UNSUPPORTED_OUTPUT_PARAMETERS:
            if param in out.parameters:
                raise InvalidRequest(f"output {out.name!r}: parameter {param!r} is not supported")
        if out.name not in names:
            names.append(out.name)
    return tuple(names)


def encode_response(
    request: InferRequest,
    model_name: str,
    results: Mapping[str, np.ndarray[Any, Any]],
    outputs: Sequence[str],
) -> InferResponse:
    """Build the response: every requested output as raw contents, in the requested order."""
    tensors = []
    for name in outputs:
        array = np.asarray(results[name])
        datatype = datatype_of(array.dtype)
        tensors.append(InferOutput(name, datatype, array.shape, _encode_array(array, datatype)))
    return InferResponse(model_name, request.id, tensors)


def _encode_array(array: np.ndarray[Any, Any], datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for item in array.reshape(-1):
            data = item.encode() if isinstance(item, str) else bytes(item)
            parts.append(_LEN.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=DATATYPES[datatype]).tobytes()
