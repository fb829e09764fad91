"""The one protocol every storage backend implements, and the values that cross it.

A fetcher answers three questions about one configured store (one storage key and bucket):
what is this object (`stat`), what lies under this prefix (`list`), and what are these bytes
(`read`, a stream of chunks of one byte range). Everything above it (ranges in parallel,
retries, resuming, verification, the cache) is written once in mesh.puller.transfer and
mesh.puller.core.

How it fails: a fetcher raises only mesh errors, translated where the third-party error enters
and scrubbed of credentials: ArtifactNotFound, StorageAccessDenied, StorageUnavailable (a
transient failure: the caller retries it, resuming where the stream stopped), ArtifactChanged
(the object's size or ETag differ from what `stat` said: the caller starts over),
StorageConfigError, UnsafePath. `RangesUnsupported` is the one internal signal: the server
ignores byte ranges, so the caller falls back to one whole-object stream.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """An object as its store describes it; `etag` and `version` when the store has them."""

    key: str
    size: int
    etag: str | None = None
    version: str | None = None


@dataclass(frozen=True, slots=True)
class ClientPolicy:
    """How backends talk to their store: seconds for connecting, for one whole request, and for
    a stall (no byte received) within one."""

    connect_timeout: float = 5.0
    request_timeout: float = 300.0
    stall_timeout: float = 30.0
    # Chunks handed up by a stream: a broken stream resumes at the last whole chunk.
    chunk_bytes: int = 256 << 10


class RangesUnsupported(Exception):
    """The server ignores byte ranges: read the object as one stream instead.

    Internal to the puller (never reaches a client), hence not part of mesh.errors.
    """


class Fetcher(Protocol):
    """One store, as the puller sees it.

    `location` names it in messages (`s3://bucket`), `identity` says where its bytes come from
    for the cache (type, endpoint, bucket); neither ever holds a credential. `md5_etags` says
    that an ETag of 32 hex digits is the MD5 of the content (S3 and its compatibles, for
    objects not uploaded in parts).
    """

    storage_key: str
    location: str
    identity: str
    md5_etags: bool
    can_list: bool
    # For metrics: s3, gcs, azure, http, file.
    kind: str

    async def stat(self, key: str) -> ObjectInfo | None:
        """The object at `key`, or None when there is none."""
        ...

    async def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object under `prefix/`, recursively (keys in full); [] when there are none."""
        ...

    def read(
        self, info: ObjectInfo, start: int, end: int, *, ranged: bool = True
    ) -> AsyncGenerator[bytes, None]:
        """The bytes [start, end) of the object `info` describes, in chunks.

        `ranged=False` asks for the whole object and skips to `start` (servers that ignore
        ranges). Raises ArtifactChanged if the store now reports another size or ETag.
        """
        ...

    def secrets(self) -> tuple[str, ...]:
        """The credentials in use, for scrubbing anything that mentions them."""
        ...

    async def aclose(self) -> None: ...
