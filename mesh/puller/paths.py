"""Path safety: nothing a request or a store names can make the puller write outside its cache.

Model ids never become paths (artifacts live under a digest of where they come from), but ids
shaped like paths are refused anyway, so that no later use can turn one into a path. Storage
paths, the keys a listing returns and the members of an archive are checked segment by segment:
no absolute path, no `..`, no empty or `.` segment, no backslash (a Windows separator in a zip),
no NUL. Every check raises UnsafePath (INVALID_ARGUMENT) naming what was refused.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from mesh.errors import InvalidRequest, UnsafePath
from mesh.ids import MAX_STORAGE_PATH, check_id


def check_model_id(model_id: str) -> None:
    """The mesh's one model-id rule (mesh.ids); an id shaped like a path is UnsafePath."""
    if "/" in model_id or "\\" in model_id or model_id in (".", ".."):
        raise UnsafePath(
            f"model id {model_id!r} looks like a path: '/', '\\', '.' and '..' are refused"
        )
    check_id(model_id)


def check_storage_path(path: str) -> str:
    """A path in a store, relative and '/'-separated; returned without a trailing '/'.

    >>> check_storage_path("models/mnist/")
    'models/mnist'
    """
    if not path:
        raise InvalidRequest("storage path is empty")
    if len(path) > MAX_STORAGE_PATH:
        raise InvalidRequest(f"storage path is longer than {MAX_STORAGE_PATH} characters")
    stripped = path[:-1] if path.endswith("/") else path
    safe_relative(stripped, f"storage path {path!r}")
    return stripped


def safe_relative(name: str, what: str) -> PurePosixPath:
    """`name` as a relative path that stays inside whatever directory it is joined to."""
    if not name:
        raise UnsafePath(f"{what} is empty")
    if "\0" in name or "\\" in name:
        raise UnsafePath(f"{what} holds a NUL or a backslash")
    if name.startswith("/"):
        raise UnsafePath(f"{what} is absolute")
    parts = name.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafePath(f"{what} has an empty, '.' or '..' segment")
    return PurePosixPath(*parts)


def join_inside(root: Path, relative: PurePosixPath) -> Path:
    """root / relative, refused if symbolic links on disk would take it outside `root`."""
    target = root.joinpath(*relative.parts)
    resolved_root = root.resolve()
    if not target.resolve().is_relative_to(resolved_root):
        raise UnsafePath(f"{relative} leaves {root} through a link")
    return target
