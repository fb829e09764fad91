"""The disk cache: artifacts under one root, within a byte budget, shared with the pod.

    <root>/artifacts/<digest>/meta.json        where it came from, its size, what to return
    <root>/artifacts/<digest>/data/...         the file, or the tree of a prefix or an archive
    <root>/.tmp/<digest>.<random>/             a download in progress (never under artifacts/)
    <root>/.trash/                             evicted artifacts, while they are deleted
    <root>/holds.json                          which model holds which artifact

An artifact's directory is named by a digest of where it comes from (storage key, store,
bucket, path, unpack mode), so no model id or key ever becomes a path here. A download is built
in .tmp/ and renamed into artifacts/ in one rename: a partial download is never visible under
the final name, and a crash leaves only .tmp/ to wipe at the next start.

Budget: bytes of artifacts plus bytes reserved for downloads in progress never exceed the
capacity. A download reserves the object's size before its first byte (an archive reserves its
unpacked size too, while both exist); a reservation that does not fit evicts artifacts no model
holds, least recently used first, and raises CacheFull when even that is not enough. An
artifact a model holds (pulled and not released; one reference per model id) or a pull is
waiting on is never evicted. Holdings are written to holds.json on every change, so a
restarted puller still never evicts what the pod uses.

Only the event loop touches the index; the lock orders reservations (eviction awaits deletion).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import TracebackType

from mesh.errors import CacheFull
from mesh.puller.metrics import PullerMetrics
from mesh.puller.paths import safe_relative
from mesh.puller.records import ArtifactView, CacheView

log = logging.getLogger(__name__)

_META = "meta.json"
_HOLDS = "holds.json"
_META_VERSION = 1


@dataclass(frozen=True, slots=True)
class ArtifactKey:
    """Where an artifact comes from. Its digest names its directory."""

    storage_key: str
    # The fetcher's identity: type, endpoint, bucket (never a credential).
    identity: str
    # The storage path; a trailing '/' when the pull asked for a prefix.
    path: str
    unpack: str
    # For people: s3://bucket/path.
    source: str = field(default="", compare=False)
    # The object's hex digest the pull asked for ("": none). Part of the key: an artifact
    # fetched unchecked, or checked against another digest, never answers a pull that names
    # one; only a download verified against this digest does.
    sha256: str = ""

    def digest(self) -> str:
        fields = [self.storage_key, self.identity, self.path, self.unpack]
        if self.sha256:  # keys without one keep the digests (directories) they always had
            fields.append(self.sha256)
        return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:40]


@dataclass(slots=True)
class Artifact:
    """An artifact in the cache (internal and mutable: only the cache changes it)."""

    key: ArtifactKey
    digest: str
    size: int
    directory: Path
    # What a pull returns: directory/data/<file>, directory/data, or a directory under it.
    local_path: Path
    last_used: float
    holders: set[str] = field(default_factory=set)


class Reservation:
    """Bytes set aside for one download: grown or shrunk as the download learns more, given
    back by `close()` (or turned into the artifact's bytes by `DiskCache.commit`)."""

    def __init__(self, cache: DiskCache, nbytes: int, what: str) -> None:
        self._cache = cache
        self.nbytes = nbytes
        self.what = what
        self.closed = False

    async def resize(self, delta: int) -> None:
        if delta > 0:
            await self._cache._grow(self, delta)
        elif delta < 0:
            shrink = min(-delta, self.nbytes)
            self.nbytes -= shrink
            self._cache._reserved -= shrink
            self._cache._publish()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._cache._reserved -= self.nbytes
            self.nbytes = 0
            self._cache._publish()

    def __enter__(self) -> Reservation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class DiskCache:
    """The bounded artifact cache (see the module docstring).

    >>> cache = DiskCache(Path("/models/cache"), capacity=10 * 2**30, metrics=metrics)
    >>> cache.recover()                       # at start: index what is there, wipe .tmp/
    >>> r = await cache.reserve(size, "s3://bucket/mnist.onnx")   # doctest: +SKIP
    """

    def __init__(self, root: Path, capacity: int, metrics: PullerMetrics) -> None:
        self.root = root
        self.capacity = capacity
        self.artifacts_dir = root / "artifacts"
        self.tmp_dir = root / ".tmp"
        self.trash_dir = root / ".trash"
        self._metrics = metrics
        self._entries: dict[str, Artifact] = {}
        self._holdings: dict[str, str] = {}  # model id -> digest
        self._pins: Counter[str] = Counter()  # digest -> pulls waiting on it
        self._used = 0
        self._reserved = 0
        self._lock = asyncio.Lock()

    # -- start-up -------------------------------------------------------------------------

    def recover(self) -> None:
        """Index the artifacts already on disk, wipe unfinished work, restore holdings, and
        evict down to the capacity if it shrank. Blocking: call before serving."""
        for directory in (self.artifacts_dir, self.tmp_dir, self.trash_dir):
            directory.mkdir(parents=True, exist_ok=True)
        for leftover in (self.tmp_dir, self.trash_dir):
            for path in leftover.iterdir():
                _remove(path)
        for path in sorted(self.artifacts_dir.iterdir()):
            artifact = self._read_meta(path)
            if artifact is None:
                log.warning("removing %s: not a complete artifact", path)
                _remove(path)
                continue
            self._entries[artifact.digest] = artifact
            self._used += artifact.size
        for model_id, digest in self._read_holds().items():
            if digest in self._entries:
                self._holdings[model_id] = digest
                self._entries[digest].holders.add(model_id)
        if self._used > self.capacity:
            victims, _ = self._victims(self._used - self.capacity)
            for artifact in victims:
                self._unlink(artifact)
            for path in self.trash_dir.iterdir():
                _remove(path)
        self._write_holds()
        self._publish()
        log.info(
            "cache %s: %d artifacts, %d of %d bytes, %d held",
            self.root,
            len(self._entries),
            self._used,
            self.capacity,
            len(self._holdings),
        )

    def _read_meta(self, path: Path) -> Artifact | None:
        try:
            meta = json.loads((path / _META).read_text())
            if meta.get("version") != _META_VERSION or path.name != meta["digest"]:
                return None
            key = ArtifactKey(
                meta["storage_key"],
                meta["identity"],
                meta["path"],
                meta["unpack"],
                meta["source"],
                meta.get("sha256", ""),
            )
            content = path / safe_relative(meta["content"], "content")
            if key.digest() != path.name or not content.exists():
                return None
            return Artifact(
                key, path.name, int(meta["size"]), path, content, (path / _META).stat().st_mtime
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.debug("unreadable artifact %s: %s", path, type(exc).__name__)
            return None

    def _read_holds(self) -> dict[str, str]:
        try:
            holds = json.loads((self.root / _HOLDS).read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            log.warning("%s is unreadable: holdings start empty", self.root / _HOLDS)
            return {}
        if not isinstance(holds, dict):
            return {}
        return {str(k): str(v) for k, v in holds.items()}

    # -- lookups and references -----------------------------------------------------------

    def lookup(self, digest: str) -> Artifact | None:
        """The artifact if it is complete on disk (someone may have deleted its files)."""
        artifact = self._entries.get(digest)
        if artifact is None:
            return None
        if not artifact.local_path.exists():
            log.warning("%s vanished from the cache: downloading it again", artifact.local_path)
            self._drop(artifact)
            return None
        return artifact

    def pin(self, digest: str) -> None:
        """A pull is waiting on `digest`: it may not be evicted until `unpin`."""
        self._pins[digest] += 1

    def unpin(self, digest: str) -> None:
        self._pins[digest] -= 1
        if self._pins[digest] <= 0:
            del self._pins[digest]

    def hold(self, model_id: str, digest: str) -> None:
        """`model_id` uses `digest` (and no longer what it held before, if anything else)."""
        artifact = self._entries[digest]
        artifact.last_used = time.time()
        _touch(artifact)
        previous = self._holdings.get(model_id)
        if previous == digest:
            return
        if previous is not None and previous in self._entries:
            self._entries[previous].holders.discard(model_id)
        self._holdings[model_id] = digest
        artifact.holders.add(model_id)
        self._write_holds()
        self._publish()

    def release(self, model_id: str) -> bool:
        """`model_id` no longer uses its artifact; False when it held none."""
        digest = self._holdings.pop(model_id, None)
        if digest is None:
            return False
        artifact = self._entries.get(digest)
        if artifact is not None:
            artifact.holders.discard(model_id)
        self._write_holds()
        self._publish()
        return True

    # -- space ------------------------------------------------------------------------------

    async def reserve(self, nbytes: int, what: str) -> Reservation:
        """Set `nbytes` aside, evicting what no one holds if needed; CacheFull if impossible."""
        reservation = Reservation(self, 0, what)
        await self._grow(reservation, nbytes)
        return reservation

    async def _grow(self, reservation: Reservation, nbytes: int) -> None:
        async with self._lock:
            total = reservation.nbytes + nbytes
            if total > self.capacity:
                raise CacheFull(
                    f"{reservation.what} needs {total} bytes: more than the whole cache "
                    f"({self.capacity} bytes, --cache-bytes)"
                )
            excess = self._used + self._reserved + nbytes - self.capacity
            if excess > 0:
                victims, freed = self._victims(excess)
                if freed < excess:
                    raise CacheFull(
                        f"{reservation.what} needs {nbytes} bytes more; "
                        f"{self.capacity - self._used - self._reserved} of {self.capacity} are "
                        f"free, {self.in_use_bytes()} are held by models and "
                        f"{self._reserved} by downloads in progress, and nothing else can be "
                        "evicted"
                    )
                for artifact in victims:
                    self._unlink(artifact)
                    log.info("evicted %s (%d bytes)", artifact.key.source, artifact.size)
                # Deleted before the space is granted: the disk never holds more than the
                # budget, not even for a moment.
                await asyncio.to_thread(_empty, self.trash_dir)
            reservation.nbytes += nbytes
            self._reserved += nbytes
            self._publish()

    def _victims(self, needed: int) -> tuple[list[Artifact], int]:
        candidates = sorted(
            (a for a in self._entries.values() if not a.holders and a.digest not in self._pins),
            key=lambda a: a.last_used,
        )
        chosen: list[Artifact] = []
        freed = 0
        for artifact in candidates:
            if freed >= needed:
                break
            chosen.append(artifact)
            freed += artifact.size
        return chosen, freed

    def _unlink(self, artifact: Artifact) -> None:
        """Out of the index and out of artifacts/ at once (one rename); deleted later."""
        self._entries.pop(artifact.digest, None)
        self._used -= artifact.size
        self._metrics.evictions.inc()
        self._metrics.evicted_bytes.inc(artifact.size)
        source = self.artifacts_dir / artifact.digest
        with contextlib.suppress(FileNotFoundError):
            os.rename(source, self.trash_dir / f"{artifact.digest}.{secrets.token_hex(4)}")

    def _drop(self, artifact: Artifact) -> None:
        self._entries.pop(artifact.digest, None)
        self._used -= artifact.size
        _remove(self.artifacts_dir / artifact.digest)
        self._publish()

    # -- downloads --------------------------------------------------------------------------

    def workdir(self, digest: str) -> Path:
        """A fresh directory for building one artifact, on the cache's filesystem."""
        path = self.tmp_dir / f"{digest}.{secrets.token_hex(6)}"
        path.mkdir(parents=True)
        return path

    def commit(
        self,
        reservation: Reservation,
        key: ArtifactKey,
        workdir: Path,
        content: PurePosixPath,
        size: int,
    ) -> Artifact:
        """Move a finished download into place (one rename) and account for it.

        `size` must fit the reservation, which it replaces."""
        if size > reservation.nbytes:
            raise AssertionError(f"{size} bytes committed on a reservation of {reservation.nbytes}")
        digest = key.digest()
        meta = {
            "version": _META_VERSION,
            "digest": digest,
            "storage_key": key.storage_key,
            "identity": key.identity,
            "path": key.path,
            "unpack": key.unpack,
            "source": key.source,
            "sha256": key.sha256,
            "content": content.as_posix(),
            "size": size,
            "created": time.time(),
        }
        (workdir / _META).write_text(json.dumps(meta, indent=1))
        final = self.artifacts_dir / digest
        stale = self._entries.get(digest)
        if stale is not None:
            self._unlink(stale)
        elif final.exists():  # left by a crash between rename and index: not accounted for
            _remove(final)
        os.rename(workdir, final)
        artifact = Artifact(key, digest, size, final, final / content, time.time())
        self._entries[digest] = artifact
        self._used += size
        reservation.close()
        self._publish()
        return artifact

    # -- views ------------------------------------------------------------------------------

    def in_use_bytes(self) -> int:
        return sum(a.size for a in self._entries.values() if a.holders)

    @property
    def used(self) -> int:
        return self._used

    @property
    def reserved(self) -> int:
        return self._reserved

    def view(self) -> CacheView:
        artifacts = sorted(self._entries.values(), key=lambda a: a.last_used, reverse=True)
        return CacheView(
            capacity=self.capacity,
            used=self._used,
            reserved=self._reserved,
            in_use=self.in_use_bytes(),
            artifacts=tuple(
                ArtifactView(
                    storage_key=a.key.storage_key,
                    source=a.key.source,
                    local_path=a.local_path,
                    size=a.size,
                    models=tuple(sorted(a.holders)),
                    last_used=a.last_used,
                )
                for a in artifacts
            ),
        )

    def _publish(self) -> None:
        m = self._metrics
        m.cached_bytes.set(self._used)
        m.reserved_bytes.set(self._reserved)
        m.in_use_bytes.set(self.in_use_bytes())
        m.capacity_bytes.set(self.capacity)
        m.artifacts.set(len(self._entries))

    def _write_holds(self) -> None:
        path = self.root / _HOLDS
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._holdings, sort_keys=True))
        os.replace(tmp, path)


def _touch(artifact: Artifact) -> None:
    # The meta file's mtime orders least-recently-used across restarts.
    with contextlib.suppress(OSError):
        os.utime(artifact.directory / _META)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _empty(directory: Path) -> None:
    for path in directory.iterdir():
        _remove(path)
