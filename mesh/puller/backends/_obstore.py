"""The fetcher shared by the backends obstore serves (S3 and compatibles, GCS, Azure, HTTP).

Each backend module only turns its storage entry into an obstore store; reading, listing,
checking and error translation live here once. obstore's own retries are switched off: the
puller retries with its own policy (mesh.retry.Backoff), resuming a broken stream where it
stopped instead of starting the request over.

How it fails: obstore's exceptions are translated here, where they enter, into the mesh errors
mesh.puller.fetcher lists. The HTTP status is read from obstore's message (404 → not found,
401/403 → access denied, 412/416 → changed, 5xx, 408, 429 and errors with no status →
transient). Messages carry the storage key, the location and a scrubbed summary; the chained
obstore exception is scrubbed of the entry's credentials before it is kept.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import AsyncGenerator
from datetime import timedelta
from typing import TYPE_CHECKING, NoReturn

import obstore
from obstore.exceptions import (
    InvalidPathError,
    NotSupportedError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)

from mesh.errors import (
    ArtifactChanged,
    ArtifactNotFound,
    MeshError,
    StorageAccessDenied,
    StorageConfigError,
    StorageUnavailable,
    UnsafePath,
)
from mesh.puller.fetcher import ClientPolicy, ObjectInfo, RangesUnsupported
from mesh.puller.storage import StorageEntry, scrub_exception, summary

if TYPE_CHECKING:
    from obstore import GetOptions
    from obstore.store import ClientConfig, ObjectStore

_STATUS = re.compile(r"status(?: code)?:? (\d{3})")
_CODE = re.compile(r"<Code>(\w+)</Code>")
_NO_RETRIES = {"max_retries": 0}


def client_options(
    policy: ClientPolicy,
    *,
    allow_http: bool,
    certificate: str | None = None,
    headers: dict[str, str] | None = None,
) -> ClientConfig:
    options: ClientConfig = {
        "allow_http": allow_http,
        "connect_timeout": timedelta(seconds=policy.connect_timeout),
        "timeout": timedelta(seconds=policy.request_timeout),
        "read_timeout": timedelta(seconds=policy.stall_timeout),
    }
    if certificate:
        options["root_certificate"] = certificate
    if headers:
        options["default_headers"] = headers
    return options


def retry_config() -> dict[str, int]:
    return dict(_NO_RETRIES)


def config_error(entry: StorageEntry, exc: Exception) -> StorageConfigError:
    """obstore refused to build a store from the entry."""
    scrub_exception(exc, entry.secrets())
    return StorageConfigError(
        f"storage {entry.name!r} ({entry.type}) is invalid: {summary(exc, entry.secrets())}"
    )


class ObstoreFetcher:
    """A Fetcher over one obstore store (see mesh.puller.fetcher.Fetcher)."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        entry: StorageEntry,
        location: str,
        identity: str,
        kind: str,
        md5_etags: bool,
        can_list: bool,
        policy: ClientPolicy,
    ) -> None:
        self._store = store
        self._secrets = entry.secrets()
        self._policy = policy
        self.storage_key = entry.name
        self.location = location
        self.identity = identity
        self.kind = kind
        self.md5_etags = md5_etags
        self.can_list = can_list

    def secrets(self) -> tuple[str, ...]:
        return self._secrets

    async def stat(self, key: str) -> ObjectInfo | None:
        try:
            meta = await obstore.head_async(self._store, key)
        except FileNotFoundError:
            return None
        except Exception as exc:
            self._raise(exc, key)
        return ObjectInfo(key, int(meta["size"]), meta.get("e_tag"), meta.get("version"))

    async def list(self, prefix: str) -> builtins.list[ObjectInfo]:
        found: list[ObjectInfo] = []
        try:
            async for chunk in obstore.list(self._store, prefix, chunk_size=1000):
                for meta in chunk:
                    found.append(
                        ObjectInfo(
                            meta["path"], int(meta["size"]), meta.get("e_tag"), meta.get("version")
                        )
                    )
        except FileNotFoundError:
            return []
        except Exception as exc:
            self._raise(exc, prefix + "/")
        return found

    async def read(
        self, info: ObjectInfo, start: int, end: int, *, ranged: bool = True
    ) -> AsyncGenerator[bytes, None]:
        options: GetOptions = {}
        if ranged:
            options["range"] = (start, end)
        if info.etag:
            options["if_match"] = info.etag
        try:
            result = await obstore.get_async(self._store, info.key, options=options)
        except NotSupportedError as exc:
            if not ranged:
                self._raise(exc, info.key)
            raise RangesUnsupported(info.key) from None
        except FileNotFoundError as exc:  # deleted since stat: start over, and find it gone
            raise ArtifactChanged(self._where(info.key, "disappeared")) from exc
        except Exception as exc:
            self._raise(exc, info.key)
        meta = result.meta
        if int(meta["size"]) != info.size or (
            info.etag and meta.get("e_tag") and meta.get("e_tag") != info.etag
        ):
            raise ArtifactChanged(
                self._where(
                    info.key, f"changed while downloading ({info.size} bytes, now {meta['size']})"
                )
            )
        skip = 0 if ranged else start
        remaining = end - start
        stream = result.stream(min_chunk_size=self._policy.chunk_bytes)
        while remaining > 0:
            try:
                chunk = await stream.__anext__()
            except StopAsyncIteration:
                return
            except Exception as exc:
                self._raise(exc, info.key)
            if skip:
                if len(chunk) <= skip:
                    skip -= len(chunk)
                    continue
                chunk, skip = chunk[skip:], 0
            if len(chunk) > remaining:
                chunk = chunk[:remaining]
            remaining -= len(chunk)
            yield chunk

    async def aclose(self) -> None:
        return None  # obstore closes its connection pool when the store is collected

    def _where(self, key: str, what: str) -> str:
        return f"storage {self.storage_key!r}: {self.location}/{key} {what}"

    def _raise(self, exc: Exception, key: str) -> NoReturn:
        raise self._translate(exc, key) from scrub_exception(exc, self._secrets)

    def _translate(self, exc: Exception, key: str) -> MeshError:
        detail = summary(exc, self._secrets)
        text = str(exc)
        match = _STATUS.search(text)
        status = int(match.group(1)) if match else None
        code_match = _CODE.search(text)
        code = code_match.group(1) if code_match else None
        said = f" ({status}{' ' + code if code else ''})" if status else ""
        if isinstance(exc, PermissionDeniedError | UnauthenticatedError) or status in (401, 403):
            return StorageAccessDenied(
                self._where(key, f"refused: the store denied the configured credentials{said}")
            )
        if isinstance(exc, FileNotFoundError) or status == 404:
            if code in ("NoSuchBucket", "ContainerNotFound"):
                return ArtifactNotFound(
                    f"storage {self.storage_key!r}: {self.location} does not exist{said}"
                )
            return ArtifactNotFound(self._where(key, f"not found{said}"))
        if isinstance(exc, PreconditionError) or status in (412, 416):
            return ArtifactChanged(self._where(key, f"changed while downloading{said}"))
        if isinstance(exc, InvalidPathError):
            # object_store refuses keys with empty, '.' or '..' segments (in a listing too).
            return UnsafePath(
                self._where(key, "holds a key with an empty, '.' or '..' segment: refused")
            )
        if status is not None and 400 <= status < 500 and status not in (408, 429):
            return StorageConfigError(self._where(key, f"refused by the store: {detail}"))
        return StorageUnavailable(self._where(key, f"failed: {detail}"))
