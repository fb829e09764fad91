"""Moving one object's bytes into one local file: ranges in parallel, each resumed where it
broke, the whole verified, started over when the object changes.

An object larger than the range size is split into ranges fetched at once (bounded by the
puller-wide request semaphore) and written in place with pwrite into a file allocated to its
full size up front. A range whose stream breaks resumes at the byte it reached, after a
backoff (mesh.retry.Backoff); its attempt count resets whenever it made progress. A server that
ignores ranges gets one whole-object stream instead (resumed by skipping what it already has).

When it is all there: the size is right by construction (every range ends exactly where it
should, and every response must report the size and ETag `stat` saw), the ETag is checked as
an MD5 where the store makes it one, and a SHA-256 given with the pull is checked too.

How it fails: StorageUnavailable after `retries` failed attempts at one range without progress;
ArtifactChanged when the object changed on every attempt; ArtifactCorrupt when a checksum
mismatched on every attempt; ArtifactNotFound when it is gone; CacheFull when the disk is full.
Two downloads that both miss an MD5 ETag with the same digest are taken as proof that the ETag
is no MD5 (SSE-KMS objects, some S3 compatibles): the file is kept, and that is logged.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import re
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mesh.errors import (
    ArtifactChanged,
    ArtifactCorrupt,
    ArtifactNotFound,
    CacheFull,
    StorageUnavailable,
)
from mesh.puller.fetcher import Fetcher, ObjectInfo, RangesUnsupported
from mesh.puller.metrics import PullerMetrics
from mesh.retry import Backoff

log = logging.getLogger(__name__)

T = TypeVar("T")
_MD5_ETAG = re.compile(r'^(?:W/)?"?([0-9a-fA-F]{32})"?$')
_HASH_BLOCK = 4 << 20


@dataclass(frozen=True, slots=True)
class TransferPolicy:
    """Ranges of `range_bytes`; `retries` attempts after a failure, spaced by `backoff`;
    `verify` checks MD5 ETags."""

    range_bytes: int = 16 << 20
    retries: int = 5
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.2, maximum=5.0))
    verify: bool = True


def ranges(size: int, range_bytes: int) -> list[tuple[int, int]]:
    """[start, end) ranges covering `size` bytes.

    >>> ranges(10, 4)
    [(0, 4), (4, 8), (8, 10)]
    """
    return [(start, min(start + range_bytes, size)) for start in range(0, size, range_bytes)]


class Transfer:
    """Downloads objects into files for the puller; one per process, shared by all pulls.

    >>> transfer = Transfer(TransferPolicy(), requests=asyncio.Semaphore(16), metrics=m)
    >>> info = await transfer.download(fetcher, "models/mnist.onnx", Path("/cache/.tmp/x"))
    ... # doctest: +SKIP
    """

    def __init__(
        self,
        policy: TransferPolicy,
        *,
        requests: asyncio.Semaphore,
        metrics: PullerMetrics,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.policy = policy
        self._requests = requests
        self._metrics = metrics
        self._sleep = sleep

    async def retrying(self, op: Callable[[], Awaitable[T]]) -> T:
        """`op()` (one storage request), retried while it fails transiently."""
        delays = self.policy.backoff.delays()
        failures = 0
        while True:
            try:
                async with self._requests:
                    return await op()
            except StorageUnavailable as exc:
                failures += 1
                if failures > self.policy.retries:
                    raise
                self._metrics.retries.labels("unavailable").inc()
                log.info("retrying after a transient failure: %s", exc)
                await self._sleep(next(delays))

    async def download(
        self,
        fetcher: Fetcher,
        key: str,
        dest: Path,
        *,
        known: ObjectInfo | None = None,
        sha256: str | None = None,
        resize: Callable[[int], Awaitable[None]] | None = None,
    ) -> ObjectInfo:
        """Fetch `key` into the new file `dest`, verified; the object as downloaded.

        `known` is what a listing said (saves a stat). `resize(delta)` is awaited before any
        byte is written when the object's size differs from `known`'s (the caller's space
        reservation follows it; it may raise CacheFull).
        """
        delays = self.policy.backoff.delays()
        reserved = known.size if known is not None else None
        info = known
        attempts = 0
        previous_md5: str | None = None
        while True:
            if info is None:
                info = await self.retrying(lambda: fetcher.stat(key))
                if info is None:
                    raise ArtifactNotFound(
                        f"storage {fetcher.storage_key!r}: no object {fetcher.location}/{key}"
                    )
            if reserved is not None and info.size != reserved and resize is not None:
                await resize(info.size - reserved)
            reserved = info.size
            try:
                await self._fetch(fetcher, info, dest)
                md5, sha = await asyncio.to_thread(
                    _digests, dest, self._expects_md5(fetcher, info), sha256 is not None
                )
                expected_md5 = self._expected_md5(fetcher, info)
                if expected_md5 is not None and md5 != expected_md5:
                    if md5 == previous_md5:
                        log.info(
                            "storage %r: %s/%s: ETag is not the content's MD5 (encrypted with "
                            "KMS?); two downloads agree, keeping it",
                            fetcher.storage_key,
                            fetcher.location,
                            key,
                        )
                    else:
                        previous_md5 = md5
                        raise ArtifactCorrupt(
                            f"storage {fetcher.storage_key!r}: {fetcher.location}/{key}: MD5 "
                            f"{md5} does not match the ETag {info.etag}"
                        )
                if sha256 is not None and sha != sha256.lower():
                    raise ArtifactCorrupt(
                        f"storage {fetcher.storage_key!r}: {fetcher.location}/{key}: SHA-256 "
                        f"{sha} is not the expected {sha256.lower()}"
                    )
                return info
            except (ArtifactChanged, ArtifactCorrupt) as exc:
                attempts += 1
                if attempts > self.policy.retries:
                    raise
                reason = "changed" if isinstance(exc, ArtifactChanged) else "corrupt"
                self._metrics.retries.labels(reason).inc()
                log.warning("%s; downloading again", exc)
                await self._sleep(next(delays))
                info = None

    def _expects_md5(self, fetcher: Fetcher, info: ObjectInfo) -> bool:
        return self._expected_md5(fetcher, info) is not None

    def _expected_md5(self, fetcher: Fetcher, info: ObjectInfo) -> str | None:
        if not (self.policy.verify and fetcher.md5_etags and info.etag):
            return None
        match = _MD5_ETAG.match(info.etag)
        return match.group(1).lower() if match else None

    async def _fetch(self, fetcher: Fetcher, info: ObjectInfo, dest: Path) -> None:
        fd = os.open(
            dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644
        )
        out = FileWriter(fd)
        try:
            if info.size:
                _allocate(fd, info.size)
            try:
                await run_all(
                    self._range(fetcher, info, out, start, end, ranged=True)
                    for start, end in ranges(info.size, self.policy.range_bytes)
                )
            except RangesUnsupported:
                log.info(
                    "storage %r: %s ignores byte ranges; one stream per object",
                    fetcher.storage_key,
                    fetcher.location,
                )
                await self._range(fetcher, info, out, 0, info.size, ranged=False)
        finally:
            await out.aclose()

    async def _range(
        self,
        fetcher: Fetcher,
        info: ObjectInfo,
        out: FileWriter,
        start: int,
        end: int,
        *,
        ranged: bool,
    ) -> None:
        delays = self.policy.backoff.delays()
        failures = 0
        pos = start
        counter = self._metrics.downloaded_bytes.labels(fetcher.kind)
        while pos < end:
            began = pos
            try:
                async with (
                    self._requests,
                    aclosing(fetcher.read(info, pos, end, ranged=ranged)) as stream,
                ):
                    async for chunk in stream:
                        await out.write(chunk, pos)
                        pos += len(chunk)
                        counter.inc(len(chunk))
                if pos < end:
                    raise StorageUnavailable(
                        f"storage {fetcher.storage_key!r}: {fetcher.location}/{info.key}: the "
                        f"stream ended at byte {pos} of {end}"
                    )
            except StorageUnavailable as exc:
                if pos > began:  # progress: this is a new failure, not the same one again
                    failures = 0
                    delays = self.policy.backoff.delays()
                failures += 1
                if failures > self.policy.retries:
                    raise
                self._metrics.retries.labels("unavailable").inc()
                log.info("%s; resuming at byte %d", exc, pos)
                await self._sleep(next(delays))


class FileWriter:
    """Writes at offsets from worker threads, and closes the file only once no thread is still
    writing: a cancelled coroutine does not stop its thread, and a closed file descriptor's
    number is soon another file's."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._pending: set[asyncio.Future[None]] = set()

    async def write(self, data: bytes, offset: int) -> None:
        future = asyncio.ensure_future(asyncio.to_thread(_pwrite_all, self.fd, data, offset))
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        await asyncio.shield(future)

    async def aclose(self) -> None:
        while self._pending:
            await asyncio.wait(set(self._pending))
        os.close(self.fd)


async def run_all(coros: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run all; on the first failure cancel the rest and raise that failure (not a group)."""
    try:
        async with asyncio.TaskGroup() as group:
            for coro in coros:
                group.create_task(coro)
    except BaseExceptionGroup as group_exc:
        first = _first(group_exc)
        # Keep the failure's own cause (the scrubbed third-party error): `from None` would drop it.
        raise first from first.__cause__


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]


def _allocate(fd: int, size: int) -> None:
    """Claim the file's whole size now: a full disk fails before the download, not midway."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CacheFull(f"the cache's disk is full: {size} bytes cannot be allocated") from exc
        os.ftruncate(fd, size)  # a filesystem without fallocate


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    try:
        while view:
            written = os.pwrite(fd, view, offset)
            view = view[written:]
            offset += written
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CacheFull("the cache's disk is full") from exc
        raise


def _digests(path: Path, md5: bool, sha256: bool) -> tuple[str | None, str | None]:
    if not (md5 or sha256):
        return None, None
    h_md5 = hashlib.md5(usedforsecurity=False) if md5 else None
    h_sha = hashlib.sha256() if sha256 else None
    buffer = bytearray(_HASH_BLOCK)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buffer):
            if h_md5 is not None:
                h_md5.update(view[:n])
            if h_sha is not None:
                h_sha.update(view[:n])
    return (h_md5.hexdigest() if h_md5 else None, h_sha.hexdigest() if h_sha else None)
