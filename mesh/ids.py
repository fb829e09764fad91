"""The one rule for model and vmodel ids, and the check for storage paths at registration.

A model id names a key in etcd (`models/{id}`), a directory a pod may serve from, a label in
metrics and, through a Predictor, a Kubernetes object. One rule serves all of them:

    1 to 253 characters (a Kubernetes object name's bound), each an ASCII letter, a digit,
    '-', '_' or '.', the first a letter, a digit or '_'.

So an id is never empty, never `.` or `..`, never hidden, never holds `/` or `\\`, blanks,
control characters or anything outside ASCII. It is a Kubernetes object name widened by
upper case and `_` (Triton-style names such as `ResNet50_v2` pass). Every door applies it:
RegisterModel, SetVModel, the controller, the pod's repository and LoadModel, and the puller.

A storage path at registration is relative and '/'-separated with no empty, `.` or `..`
segment, no backslash and no NUL (the puller checks it again, segment by segment, before it
touches a disk: mesh.puller.paths).

How it fails: InvalidIdentifier (INVALID_ARGUMENT), its message naming the id and the rule.
This module imports no component.
"""

from __future__ import annotations

import re

from mesh.errors import InvalidIdentifier

MAX_ID_LENGTH = 253
MAX_STORAGE_PATH = 1024
RULE = (
    f"1 to {MAX_ID_LENGTH} characters of A-Z, a-z, 0-9, '-', '_' and '.', "
    "starting with a letter, a digit or '_'"
)
_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


def is_valid_id(model_id: str) -> bool:
    return 0 < len(model_id) <= MAX_ID_LENGTH and _ID.fullmatch(model_id) is not None


def check_id(model_id: str, what: str = "model id") -> str:
    """`model_id`, unchanged, or InvalidIdentifier naming the rule.

    >>> check_id("mnist-v2")
    'mnist-v2'
    """
    if is_valid_id(model_id):
        return model_id
    shown = model_id if len(model_id) <= 64 else model_id[:61] + "..."
    raise InvalidIdentifier(f"{what} {shown!r} is not valid: a {what} is {RULE}")


def check_registered_path(path: str, what: str = "storage path") -> str:
    """A storage path as registration accepts it: relative, '/'-separated, no dot segments.

    A trailing '/' (a prefix of objects) is kept.
    """
    shown = path if len(path) <= 64 else path[:61] + "..."
    if not path:
        raise InvalidIdentifier(f"{what} is empty")
    if len(path) > MAX_STORAGE_PATH:
        raise InvalidIdentifier(f"{what} {shown!r} is longer than {MAX_STORAGE_PATH} characters")
    if not path.isprintable() or "\\" in path:
        raise InvalidIdentifier(
            f"{what} {shown!r} is not valid: it holds a backslash or a control character"
        )
    if path.startswith("/"):
        raise InvalidIdentifier(f"{what} {shown!r} is not valid: it must be relative")
    segments = (path[:-1] if path.endswith("/") else path).split("/")
    if any(s in ("", ".", "..") for s in segments):
        raise InvalidIdentifier(
            f"{what} {shown!r} is not valid: a {what} has no empty, '.' or '..' segment"
        )
    return path
