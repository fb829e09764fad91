"""Generative requests in v2 tensors (the pod's side): the convention of Triton's LLM backends.

Inputs: `text_input` (BYTES, one element: the prompt), and optionally `stream` (BOOL),
`sampling_parameters` (BYTES: a JSON object of SamplingParams' keys) and
`exclude_input_in_output` (BOOL, default true: the output is the generated text alone).
Sampling parameters may also come as the request's own `parameters` (max_tokens,
temperature, ...); `sampling_parameters` wins. Output: `text_output` (BYTES, one element).

In a stream every response carries the text generated since the previous one, and the
parameter `triton_final_response` (false, then true on the last); the last also carries
`finish_reason`, `prompt_tokens` and `completion_tokens`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from mesh.errors import InvalidRequest
from mesh.inference import InferRequest, InferResponse
from mesh.llm.chunks import Chunk
from mesh.llm.params import SamplingParams
from mesh.llm.protocol import CHAT_PARAMETER, TEXT_INPUT, TEXT_OUTPUT, parse_messages
from mesh.pod.codec import decode_request, encode_response
from mesh.tensors import Signature, TensorSpec

_OPTIONAL = {
    "stream": TensorSpec("stream", "BOOL", (-1,)),
    "sampling_parameters": TensorSpec("sampling_parameters", "BYTES", (-1,)),
    "exclude_input_in_output": TensorSpec("exclude_input_in_output", "BOOL", (-1,)),
}
_TEXT = TensorSpec(TEXT_INPUT, "BYTES", (-1,))


@dataclass(frozen=True, slots=True)
class TextRequest:
    # The prompt, or chat messages ({"role", "content"}) for the model's chat template.
    prompt: str | list[dict[str, Any]]
    params: SamplingParams
    stream: bool
    echo: bool  # put the prompt before the generated text


def is_generative(model: Any) -> bool:
    return getattr(model, "generative", False) is True


def decode_text_request(request: InferRequest) -> TextRequest:
    names = [t.name for t in request.inputs]
    specs = [_TEXT] + [_OPTIONAL[n] for n in names if n in _OPTIONAL]
    unknown = [n for n in names if n != TEXT_INPUT and n not in _OPTIONAL]
    if unknown:
        raise InvalidRequest(
            f"unknown inputs {unknown}; a generative model takes {TEXT_INPUT} and optionally "
            f"{sorted(_OPTIONAL)}"
        )
    decoded = decode_request(request, Signature.of(specs, ())).inputs
    prompt = _one(decoded[TEXT_INPUT], TEXT_INPUT)
    text = prompt.decode("utf-8", "strict") if isinstance(prompt, bytes) else str(prompt)
    raw: dict[str, Any] = dict(request.parameters)
    prompt_or_chat: str | list[dict[str, Any]] = text
    if raw.pop(CHAT_PARAMETER, False):
        prompt_or_chat = parse_messages(text)
    if "sampling_parameters" in decoded:
        blob = _one(decoded["sampling_parameters"], "sampling_parameters")
        try:
            extra = json.loads(blob)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidRequest(f"sampling_parameters is not JSON: {exc}") from None
        if not isinstance(extra, dict):
            raise InvalidRequest("sampling_parameters must be a JSON object")
        raw.update(extra)
    stream = bool(_one(decoded["stream"], "stream")) if "stream" in decoded else False
    exclude = (
        bool(_one(decoded["exclude_input_in_output"], "exclude_input_in_output"))
        if "exclude_input_in_output" in decoded
        else True
    )
    return TextRequest(prompt_or_chat, SamplingParams.parse(raw), stream, not exclude)


def text_response(
    request: InferRequest, model_name: str, text: str, chunk: Chunk | None, final: bool
) -> InferResponse:
    """One response holding `text`; `chunk` (the last one) adds why and how much."""
    out = np.array([text.encode()], dtype=object)
    response = encode_response(request, model_name, {TEXT_OUTPUT: out}, (TEXT_OUTPUT,))
    response.parameters["triton_final_response"] = final
    if chunk is not None and chunk.finish_reason is not None:
        response.parameters["finish_reason"] = chunk.finish_reason
        if chunk.stats is not None:
            response.parameters["prompt_tokens"] = int(chunk.stats.prompt_tokens)
            response.parameters["completion_tokens"] = int(chunk.stats.completion_tokens)
    return response


def _one(array: np.ndarray[Any, Any], name: str) -> Any:
    if array.size != 1:
        raise InvalidRequest(f"input {name!r} must hold one element, it holds {array.size}")
    return array.reshape(-1)[0]
