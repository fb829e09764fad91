"""Files on a mounted volume: ModelMesh's `pvc` type, and `file` for any local directory.

Entry fields: `pvc`: `name`, the claim, mounted at `<pvc_root>/<name>` as ModelMesh mounts
claims (`--pvc-root`, default /pvc_mounts); `file`: `root`, the directory itself. Storage paths
are relative to that directory. Files are copied into the cache like any download, so the
cache's budget, refcounts and atomic placement hold for them too.

How it fails: a path that leaves the directory, by `..` or through a symbolic link, raises
UnsafePath; a missing directory StorageConfigError; a missing file None from `stat` (the
caller raises ArtifactNotFound); unreadable files StorageAccessDenied; a file that changes size
or modification time while it is copied ArtifactChanged.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import stat as stat_mod
from collections.abc import AsyncGenerator
from pathlib import Path

from mesh.errors import ArtifactChanged, StorageAccessDenied, StorageConfigError
from mesh.puller.fetcher import ClientPolicy, ObjectInfo
from mesh.puller.paths import join_inside, safe_relative
from mesh.puller.storage import StorageEntry


def open_fetcher(
    entry: StorageEntry, bucket: str | None, policy: ClientPolicy, pvc_root: Path
) -> FileFetcher:
    if bucket:
        raise StorageConfigError(f"storage {entry.name!r} ({entry.type}) takes no 'bucket' option")
    if entry.type == "pvc":
        name = entry.string("name", required=True) or ""
        root = join_inside(pvc_root, safe_relative(name, f"storage {entry.name!r} claim name"))
    else:
        root = Path(entry.string("root", required=True) or "")
        if not root.is_absolute():
            raise StorageConfigError(f"storage {entry.name!r} (file): 'root' must be absolute")
    if not root.is_dir():
        raise StorageConfigError(
            f"storage {entry.name!r} ({entry.type}): {root} is not a directory"
        )
    return FileFetcher(root, entry=entry, policy=policy)


def _etag(st: os.stat_result) -> str:
    return f"{st.st_mtime_ns:x}-{st.st_size:x}"


class FileFetcher:
    """A Fetcher over one directory (see mesh.puller.fetcher.Fetcher)."""

    md5_etags = False
    can_list = True
    kind = "file"

    def __init__(self, root: Path, *, entry: StorageEntry, policy: ClientPolicy) -> None:
        self.root = root
        self.storage_key = entry.name
        self.location = f"file://{root}"
        self.identity = f"file|{root.resolve()}"
        self._chunk = policy.chunk_bytes

    def secrets(self) -> tuple[str, ...]:
        return ()

    def _path(self, key: str) -> Path:
        return join_inside(self.root, safe_relative(key, f"storage path {key!r}"))

    async def stat(self, key: str) -> ObjectInfo | None:
        return await asyncio.to_thread(self._stat, key)

    def _stat(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        except PermissionError as exc:
            raise self._denied(key) from exc
        if not stat_mod.S_ISREG(st.st_mode):
            return None  # a directory: the caller lists it as a prefix
        return ObjectInfo(key, st.st_size, _etag(st))

    async def list(self, prefix: str) -> builtins.list[ObjectInfo]:
        return await asyncio.to_thread(self._list, prefix)

    def _list(self, prefix: str) -> builtins.list[ObjectInfo]:
        top = self._path(prefix)
        if not top.is_dir():
            return []
        found: list[ObjectInfo] = []
        try:
            for directory, dirs, files in os.walk(top, onerror=_raise):
                dirs.sort()
                for name in sorted(files):
                    rel = Path(directory, name).relative_to(self.root).as_posix()
                    info = self._stat(rel)  # checks links again, file by file
                    if info is not None:
                        found.append(info)
        except PermissionError as exc:
            raise self._denied(prefix) from exc
        return found

    async def read(
        self, info: ObjectInfo, start: int, end: int, *, ranged: bool = True
    ) -> AsyncGenerator[bytes, None]:
        path = self._path(info.key)
        try:
            fd = await asyncio.to_thread(os.open, path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise ArtifactChanged(f"storage {self.storage_key!r}: {info.key} disappeared") from exc
        except PermissionError as exc:
            raise self._denied(info.key) from exc
        pending: asyncio.Future[bytes] | None = None
        try:
            if _etag(os.fstat(fd)) != info.etag:
                raise ArtifactChanged(
                    f"storage {self.storage_key!r}: {info.key} changed while copying"
                )
            pos = start
            while pos < end:
                size = min(self._chunk, end - pos)
                pending = asyncio.ensure_future(asyncio.to_thread(os.pread, fd, size, pos))
                chunk = await asyncio.shield(pending)
                if not chunk:
                    break
                pos += len(chunk)
                yield chunk
            if _etag(os.fstat(fd)) != info.etag:
                raise ArtifactChanged(
                    f"storage {self.storage_key!r}: {info.key} changed while copying"
                )
        finally:
            # A cancelled read leaves its thread reading: close only once it is done.
            if pending is not None and not pending.done():
                await asyncio.wait({pending})
            os.close(fd)

    async def aclose(self) -> None:
        return None

    def _denied(self, key: str) -> StorageAccessDenied:
        return StorageAccessDenied(
            f"storage {self.storage_key!r}: {self.location}/{key} cannot "
            "be read (permission denied)"
        )


def _raise(exc: OSError) -> None:
    raise exc
