"""`mesh register --file`: many models from a file, in RegisterModels calls of `BATCH` models.

The file holds RegisterModelRequest objects in protobuf's JSON form (`modelId` or
`model_id`, `format`, `storage` {`key`, `path`, `bucket`, `unpack`, `sha256`}, or the
deprecated `storagePath` and `storageKey`; `options`, `loadNow`, `base`): a JSON list, one JSON
object a line, or a YAML list (a `.yaml`/`.yml` name). Every model is checked
by the router on its own; the command prints what failed and exits 1 if anything did.

    mesh register --file models.jsonl
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from mesh.gen import management_pb2 as mpb

BATCH = 1000


class BadFile(ValueError):
    """The file cannot be read as a list of models."""


def read_models(path: Path) -> list[mpb.RegisterModelRequest]:
    text = path.read_text()
    items: list[Any]
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            items = yaml.safe_load(text) or []
        except yaml.YAMLError as exc:
            raise BadFile(f"{path}: not YAML: {exc}") from exc
    elif text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadFile(f"{path}: not JSON: {exc}") from exc
    else:
        items = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise BadFile(f"{path}:{n}: not JSON: {exc}") from exc
    if not isinstance(items, list):
        raise BadFile(f"{path}: expected a list of models")
    out = []
    for n, item in enumerate(items, 1):
        try:
            out.append(json_format.ParseDict(item, mpb.RegisterModelRequest()))
        except (json_format.ParseError, TypeError, AttributeError) as exc:
            raise BadFile(f"{path}: model {n}: {exc}") from exc
    return out


def register_all(
    stub: Any, models: list[mpb.RegisterModelRequest], **kw: Any
) -> mpb.RegisterModelsResponse:
    """Every model through RegisterModels, `BATCH` a call; the results in the file's order."""
    merged = mpb.RegisterModelsResponse()
    for i in range(0, len(models), BATCH):
        answer = stub.RegisterModels(mpb.RegisterModelsRequest(models=models[i : i + BATCH]), **kw)
        merged.results.extend(answer.results)
    return merged


def summary(response: mpb.RegisterModelsResponse) -> tuple[list[tuple[str, str, str]], str]:
    """The failures as (model, code, message) rows, and a one-line count."""
    import grpc

    names = {c.value[0]: c.name for c in grpc.StatusCode}
    failed = [
        (r.model_id, names.get(r.code, str(r.code)), r.message) for r in response.results if r.code
    ]
    ok = len(response.results) - len(failed)
    return failed, f"{ok} registered, {len(failed)} failed"
