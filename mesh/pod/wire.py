"""The v2 protobuf messages against the data plane's protocol-neutral objects (mesh.inference).

The pod's gRPC servicer (mesh.pod.service), its REST backend (mesh.pod.rest) and a router in
this process (`wire_infer`, for `mesh serve`) convert here and nowhere else. A request's
conversion wraps the message's own repeated fields (shape, typed contents, raw contents): no
tensor bytes are copied and nothing is decoded twice. A response's raw outputs are put into
the message once, as the message always took them.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Protocol

from google.protobuf.message import DecodeError

from mesh.errors import InvalidRequest
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.inference import (
    InferInput,
    InferRequest,
    InferResponse,
    Parameters,
    ParameterValue,
    RequestedOutput,
)

# A router's in-process call: (the request's bytes, model id or "") -> the response's bytes.
WireInfer = Callable[[bytes, str], Coroutine[Any, Any, bytes]]


class _Plane(Protocol):
    """What `wire_infer` needs of mesh.pod.dataplane.DataPlane."""

    async def infer(self, request: InferRequest, name: str | None = None) -> InferResponse: ...


def parameters_of(parameters: Mapping[str, pb.InferParameter]) -> Parameters:
    """A message's parameters as plain values (None: one sent with no value)."""
    out: dict[str, ParameterValue] = {}
    for key, value in parameters.items():
        kind = value.WhichOneof("parameter_choice")
        out[key] = None if kind is None else getattr(value, kind)
    return out


def set_parameters(
    target: Mapping[str, pb.InferParameter], parameters: Mapping[str, ParameterValue]
) -> None:
    for key, value in parameters.items():
        if value is None:
            continue
        param: Any = target[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            param.int64_param = value
        elif isinstance(value, float):
            param.double_param = value
        else:
            param.string_param = str(value)


# Shared by every input without typed contents (read only, as the objects are).
_NO_CONTENTS: dict[str, Any] = {}


def _contents(tensor: pb.ModelInferRequest.InferInputTensor) -> dict[str, Any]:
    return {fd.name: values for fd, values in tensor.contents.ListFields()}


def request_of(message: pb.ModelInferRequest, size: int | None = None) -> InferRequest:
    """The neutral request over `message`'s own fields. `size`: its bytes on the wire when
    the caller has them (else measured here); the inline decision (mesh.pod.inline) keeps a
    large request off the event loop by it."""
    inputs = [
        InferInput(
            t.name, t.datatype, t.shape, _contents(t) if t.HasField("contents") else _NO_CONTENTS
        )
        for t in message.inputs
    ]
    outputs: Sequence[RequestedOutput] = ()
    if message.outputs:
        outputs = [
            RequestedOutput(o.name, parameters_of(o.parameters) if o.parameters else {})
            for o in message.outputs
        ]
    parameters = parameters_of(message.parameters) if message.parameters else {}
    return InferRequest(
        message.model_name,
        inputs,
        message.raw_input_contents,
        outputs,
        message.id,
        parameters,
        message.ByteSize() if size is None else size,
    )


def message_of(response: InferResponse) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(model_name=response.model_name, id=response.id)
    for output in response.outputs:
        tensor = message.outputs.add()
        tensor.name = output.name
        tensor.datatype = output.datatype
        tensor.shape.extend(output.shape)
        message.raw_output_contents.append(output.data)
    if response.parameters:
        set_parameters(message.parameters, response.parameters)
    return message


def wire_infer(plane: _Plane) -> WireInfer:
    """`plane.infer` on a serialized ModelInferRequest, answering a serialized response."""

    async def infer(data: bytes, name: str = "") -> bytes:
        try:
            message = pb.ModelInferRequest.FromString(data)
        except DecodeError as exc:
            raise InvalidRequest(f"the request is not a ModelInferRequest: {exc}") from None
        response = await plane.infer(request_of(message, len(data)), name or None)
        return message_of(response).SerializeToString()

    return infer
