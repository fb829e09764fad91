"""The names generative requests use on the wire, and chat messages' check.

Imports no component: the router's HTTP routes use it as the pod's data plane does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mesh.errors import InvalidRequest

# The format name of generative models (mesh.runtimes.llm).
GENERATIVE_FORMAT = "transformers"
TEXT_INPUT = "text_input"
TEXT_OUTPUT = "text_output"
# A request parameter: text_input holds chat messages as JSON, for the model's chat template.
CHAT_PARAMETER = "mesh_chat"


def refuse_request_batching(model_id: str, format: str, options: Mapping[str, str]) -> None:
    """InvalidRequest for `batch.*` options on a generative model: they merge tensor requests
    (mesh.pod.batching), which a generative model never takes; its runtime batches the steps
    of concurrent generations itself (its `max_batch` option). Checked by the router's
    RegisterModel and by the pod's load, so the option is never silently ignored."""
    if format != GENERATIVE_FORMAT:
        return
    batching = sorted(k for k in options if k.startswith("batch."))
    if batching:
        raise InvalidRequest(
            f"model {model_id!r}: {batching} do not apply to a generative model, which batches "
            "the steps of concurrent generations itself (set its max_batch option instead)"
        )


def parse_messages(text: str) -> list[dict[str, Any]]:
    """Chat messages as JSON: a list of {"role": str, "content": str}."""
    try:
        messages = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"chat messages are not JSON: {exc}") from None
    return check_messages(messages)


def check_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty list")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"messages[{i}] must be an object")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role:
            raise InvalidRequest(f"messages[{i}].role must be a string")
        if isinstance(content, list):  # OpenAI's content parts: text parts only
            texts = [p.get("text") for p in content if isinstance(p, dict)]
            if any(not isinstance(t, str) for t in texts) or len(texts) != len(content):
                raise InvalidRequest(f"messages[{i}].content: only text parts are supported")
            content = "".join(t for t in texts if isinstance(t, str))
        if not isinstance(content, str):
            raise InvalidRequest(f"messages[{i}].content must be a string")
        checked.append({"role": role, "content": content})
    return checked
