"""Protocol-neutral v2 inference requests and responses: what the pod's data plane takes and
returns, whichever protocol (gRPC, REST, a router in this process) the request came by.

The objects hold references, not copies: an input's shape, typed contents and raw contents are
whatever sequences the protocol's message already holds (a protobuf repeated field, a list), so
the conversion at an edge (mesh.pod.wire) costs one small object per tensor and no tensor bytes.
Decoding them into arrays, with every check first, is mesh.pod.codec's job.

    request = InferRequest("iris", inputs=(InferInput("x", "FP32", (1, 4)),), raw=(data,))
    response = await plane.infer(request)
    response.outputs[0].name, response.outputs[0].data

The objects are values: nothing changes one after it is made. They are not frozen dataclasses
because one is made per tensor per request, and a frozen dataclass's `__init__` costs twice a
plain one's.

Parameters are plain values (bool, int, float, str: the v2 protocol's parameter kinds; None for
one sent with no value).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

ParameterValue = bool | int | float | str | None
Parameters = Mapping[str, ParameterValue]


@dataclass(slots=True)
class InferInput:
    """One input tensor. `contents`: its typed values by the v2 field that carries them
    (`fp32_contents`, `bytes_contents`, ...), only the fields that hold any; empty when the
    request's raw contents carry the data."""

    name: str
    datatype: str
    shape: Sequence[int]
    contents: Mapping[str, Sequence[Any]] = field(default_factory=dict)


@dataclass(slots=True)
class RequestedOutput:
    name: str
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class InferRequest:
    """A v2 inference request. `raw`: one entry of raw bytes per input, in order, or empty
    (then every input carries typed contents). `outputs` empty: every output of the model.
    `size`: the request's size on its wire in bytes, as the edge knows it (0: unknown, taken
    as small); a small request of a fast model may run on the event loop (mesh.pod.inline)."""

    model_name: str
    inputs: Sequence[InferInput]
    raw: Sequence[bytes] = ()
    outputs: Sequence[RequestedOutput] = ()
    id: str = ""
    parameters: Parameters = field(default_factory=dict)
    size: int = 0


@dataclass(slots=True)
class InferOutput:
    """One output tensor; `data` is its raw contents (v2's binary layout: BYTES elements each
    after a 4-byte little-endian length)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: bytes


@dataclass(slots=True)
class InferResponse:
    model_name: str
    id: str
    outputs: list[InferOutput]
    parameters: dict[str, ParameterValue] = field(default_factory=dict)
