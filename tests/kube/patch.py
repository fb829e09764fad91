"""The patch algebra of the API server, pure: RFC 7386 merge patch and RFC 6902 JSON patch
(add, remove, replace, move, copy, test). A malformed patch raises KubeError 400, one that does
not apply 422, as the real server answers.
"""

from __future__ import annotations

import copy
from typing import Any

from tests.kube.errors import KubeError


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch; returns a new document and leaves ``target`` alone."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class _PatchFailed(Exception):
    pass


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise _PatchFailed(f"invalid JSON pointer {path!r}")
    if path == "":
        return []
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _index(container: list[Any], token: str, *, for_add: bool) -> int:
    if token == "-" and for_add:
        return len(container)
    if not token.isdigit() or (token != "0" and token.startswith("0")):
        raise _PatchFailed(f"invalid array index {token!r}")
    index = int(token)
    if index > len(container) or (index == len(container) and not for_add):
        raise _PatchFailed(f"array index {index} out of bounds")
    return index


def _parent(doc: Any, tokens: list[str]) -> Any:
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, for_add=False)]
        else:
            raise _PatchFailed(f"path /{'/'.join(tokens)} does not exist")
    return node


def _get(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        return doc
    parent = _parent(doc, tokens)
    token = tokens[-1]
    if isinstance(parent, dict) and token in parent:
        return parent[token]
    if isinstance(parent, list):
        return parent[_index(parent, token, for_add=False)]
    raise _PatchFailed(f"path /{'/'.join(tokens)} does not exist")


def _add(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent = _parent(doc, tokens)
    if isinstance(parent, dict):
        parent[tokens[-1]] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, tokens[-1], for_add=True), value)
    else:
        raise _PatchFailed(f"cannot add at /{'/'.join(tokens)}")
    return doc


def _remove(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        raise _PatchFailed("cannot remove the whole document")
    parent = _parent(doc, tokens)
    if isinstance(parent, dict) and tokens[-1] in parent:
        del parent[tokens[-1]]
    elif isinstance(parent, list):
        del parent[_index(parent, tokens[-1], for_add=False)]
    else:
        raise _PatchFailed(f"path /{'/'.join(tokens)} does not exist")
    return doc


def json_equal(a: Any, b: Any) -> bool:
    # Python's 1 == True; JSON's does not.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def json_patch(doc: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch; returns a new document. Raises KubeError 400 for a malformed patch
    and 422 for one that does not apply (a failed ``test``, a missing path), as the server."""
    if not isinstance(operations, list) or not all(isinstance(op, dict) for op in operations):
        raise KubeError(400, "a JSON patch must be a JSON array of operation objects")
    result = copy.deepcopy(doc)
    try:
        for op in operations:
            kind = op.get("op")
            tokens = _pointer(op.get("path"))
            if kind in ("add", "replace", "test") and "value" not in op:
                raise _PatchFailed(f"operation {kind} has no value")
            if kind == "add":
                result = _add(result, tokens, copy.deepcopy(op["value"]))
            elif kind == "remove":
                result = _remove(result, tokens)
            elif kind == "replace":
                _get(result, tokens)
                result = _add(_remove(result, tokens), tokens, copy.deepcopy(op["value"]))
            elif kind == "test":
                if not json_equal(_get(result, tokens), op["value"]):
                    raise _PatchFailed(f"testing value {op.get('path')} failed: test failed")
            elif kind in ("move", "copy"):
                source = _pointer(op.get("from"))
                value = copy.deepcopy(_get(result, source))
                if kind == "move":
                    result = _remove(result, source)
                result = _add(result, tokens, value)
            else:
                raise _PatchFailed(f"unexpected operation {kind!r}")
    except _PatchFailed as exc:
        raise KubeError(422, str(exc)) from exc
    return result
