"""The puller's core: Pull and Release over the disk cache, with no gRPC in it.

A pull checks its arguments (paths and ids can never leave the cache: mesh.puller.paths),
reads the storage configuration as it is now, names the artifact by where it comes from, and
either finds it in the cache (a hit), joins the download already under way for it, or starts
that download: one download per artifact however many pulls ask at once. The download runs as
its own task: a pull whose caller gives up (a gRPC deadline) leaves it running for the others
and for the cache. The model then holds the artifact until Release.

A storage path names an object or, when there is none by that name (or the path ends in '/'),
a prefix: every object under it, laid out as a directory. `.tar`, `.tar.gz`/`.tgz` and `.zip`
objects are unpacked (mesh.puller.archive) unless the pull says `unpack: false`.

A pull names its artifact with one mesh.storageref.StorageRef: the storage key and path, and
the options: `bucket` (or Azure container) instead of the entry's; `unpack`: AUTO (by suffix,
the default), TRUE (must be an archive) or FALSE; `sha256`: the hex digest a single object must
have. The reference is checked again here (mesh.storageref.check_options, and the path segment
by segment).

How it fails: every failure is a MeshError naming the model, storage key and path (never a
credential), counted in `mesh_puller_failures{reason}` by its class name. A failed download
leaves nothing behind but its reservation given back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from mesh.errors import (
    ArtifactNotFound,
    InvalidRequest,
    MeshError,
    StorageConfigError,
)
from mesh.puller import archive
from mesh.puller.backends import open_fetcher
from mesh.puller.cache import Artifact, ArtifactKey, DiskCache, Reservation
from mesh.puller.fetcher import ClientPolicy, Fetcher, ObjectInfo
from mesh.puller.metrics import PullerMetrics
from mesh.puller.paths import check_model_id, check_storage_path, safe_relative
from mesh.puller.records import CacheView, PullResult
from mesh.puller.storage import StorageConfigSource, StorageEntry
from mesh.puller.transfer import Transfer, run_all
from mesh.storageref import StorageRef, Unpack, check_options

log = logging.getLogger(__name__)

# Objects of one prefix downloaded at once (their ranges also share the request limit).
_FILES_AT_ONCE = 8

FetcherFactory = Callable[[StorageEntry, "str | None", ClientPolicy, Path], Fetcher]


@dataclass(frozen=True, slots=True)
class ArchiveBound:
    max_bytes: int = 16 << 30
    max_members: int = 100_000


class Puller:
    """Pull and Release (see the module docstring).

    >>> puller = Puller(cache=cache, config=StorageConfigSource(Path("/storage-config")),
    ...                 transfer=transfer, metrics=metrics)
    >>> result = await puller.pull("mnist", StorageRef("s3", "models/mnist.onnx"))  # doctest: +SKIP
    >>> result.local_path        # /models/cache/artifacts/<digest>/data/mnist.onnx
    >>> await puller.release("mnist")
    """

    def __init__(
        self,
        *,
        cache: DiskCache,
        config: StorageConfigSource,
        transfer: Transfer,
        metrics: PullerMetrics,
        client_policy: ClientPolicy | None = None,
        pvc_root: Path = Path("/pvc_mounts"),
        archive_bound: ArchiveBound | None = None,
        fetchers: FetcherFactory = open_fetcher,
    ) -> None:
        self.cache = cache
        self._config = config
        self._transfer = transfer
        self._metrics = metrics
        self._client_policy = client_policy or ClientPolicy()
        self._pvc_root = pvc_root
        self._archive = archive_bound or ArchiveBound()
        self._open_fetcher = fetchers
        self._fetchers: dict[tuple[str, str | None], tuple[str, Fetcher]] = {}
        self._flights: dict[str, asyncio.Task[Artifact]] = {}

    async def pull(self, model_id: str, storage: StorageRef) -> PullResult:
        """Bring the artifact `storage` names into the cache for `model_id`; its local path
        and size."""
        started = time.perf_counter()
        path = storage.path
        try:
            check_model_id(model_id)
            key = check_storage_path(path)
            prefix_only = path.endswith("/")
            opts = check_options(storage)
            entry = self._config.current().entry(storage.entry)
            fetcher = self._fetcher(entry, opts.bucket or None)
            artifact_key = ArtifactKey(
                storage_key=entry.name,
                identity=fetcher.identity,
                path=key + ("/" if prefix_only else ""),
                unpack=opts.unpack.value,
                source=f"{fetcher.location}/{key}",
                sha256=opts.sha256,
            )
            digest = artifact_key.digest()
            self.cache.pin(digest)
            try:
                artifact = self.cache.lookup(digest)
                hit = artifact is not None
                if artifact is None:
                    flight = self._flights.get(digest)
                    if flight is None:
                        self._metrics.misses.inc()
                        flight = self._start(artifact_key, fetcher, key, prefix_only, opts)
                    else:
                        self._metrics.joined.inc()
                    artifact = await asyncio.shield(flight)
                else:
                    self._metrics.hits.inc()
                self.cache.hold(model_id, digest)
            finally:
                self.cache.unpin(digest)
        except MeshError as exc:
            self.failed(model_id, str(storage), exc)
            raise
        seconds = time.perf_counter() - started
        log.info(
            "pulled %r from %s: %d bytes at %s (%s, %.3f s)",
            model_id,
            storage,
            artifact.size,
            artifact.local_path,
            "hit" if hit else "downloaded",
            seconds,
        )
        return PullResult(model_id, artifact.local_path, artifact.size, hit, seconds)

    def failed(self, model_id: str, where: str, exc: MeshError) -> None:
        """Count and log a refused or failed pull (the transport's refusals too)."""
        self._metrics.failures.labels(type(exc).__name__).inc()
        log.warning("pull of %r from %s failed: %s", model_id, where, exc)

    async def release(self, model_id: str) -> bool:
        """`model_id` no longer needs its artifact: it may be evicted. False if it held none."""
        check_model_id(model_id)
        released = self.cache.release(model_id)
        log.info("released %r%s", model_id, "" if released else " (held nothing)")
        return released

    def status(self) -> CacheView:
        return self.cache.view()

    async def aclose(self) -> None:
        """Cancel downloads in progress (their work directories are removed)."""
        flights = list(self._flights.values())
        for flight in flights:
            flight.cancel()
        await asyncio.gather(*flights, return_exceptions=True)
        for _, fetcher in self._fetchers.values():
            await fetcher.aclose()
        self._fetchers.clear()

    # -- internals --------------------------------------------------------------------------

    def _fetcher(self, entry: StorageEntry, bucket: str | None) -> Fetcher:
        """One fetcher (and connection pool) per entry and bucket, rebuilt when the entry
        changes (rotated credentials)."""
        digest = entry.digest()
        cached = self._fetchers.get((entry.name, bucket))
        if cached is not None and cached[0] == digest:
            return cached[1]
        fetcher = self._open_fetcher(entry, bucket, self._client_policy, self._pvc_root)
        self._fetchers[(entry.name, bucket)] = (digest, fetcher)
        return fetcher

    def _start(
        self,
        artifact_key: ArtifactKey,
        fetcher: Fetcher,
        key: str,
        prefix_only: bool,
        opts: StorageRef,
    ) -> asyncio.Task[Artifact]:
        digest = artifact_key.digest()
        task = asyncio.create_task(
            self._download(artifact_key, fetcher, key, prefix_only, opts),
            name=f"puller download {artifact_key.source}",
        )
        self._flights[digest] = task
        self._metrics.downloads.inc()

        def done(finished: asyncio.Task[Artifact]) -> None:
            if self._flights.get(digest) is finished:
                del self._flights[digest]
            self._metrics.downloads.dec()
            if not finished.cancelled():
                finished.exception()  # retrieved: no "never retrieved" log of its traceback

        task.add_done_callback(done)
        return task

    async def _download(
        self,
        artifact_key: ArtifactKey,
        fetcher: Fetcher,
        key: str,
        prefix_only: bool,
        opts: StorageRef,
    ) -> Artifact:
        started = time.perf_counter()
        what = f"storage {fetcher.storage_key!r}: {fetcher.location}/{key}"
        workdir = await asyncio.to_thread(self.cache.workdir, artifact_key.digest())
        reservation: Reservation | None = None
        try:
            info = None
            if not prefix_only:
                info = await self._transfer.retrying(lambda: fetcher.stat(key))
            if info is not None:
                reservation = await self.cache.reserve(info.size, what)
                content, size = await self._single(fetcher, info, workdir, reservation, opts, what)
            else:
                if opts.sha256:
                    raise InvalidRequest(f"{what}: option sha256 applies to single objects only")
                if opts.unpack is Unpack.TRUE:
                    raise InvalidRequest(f"{what}: unpack=true needs a single archive object")
                objects = await self._listing(fetcher, key, what)
                reservation = await self.cache.reserve(sum(o.size for _, o in objects), what)
                content, size = await self._prefix(fetcher, objects, workdir, reservation)
            await reservation.resize(size - reservation.nbytes)
            artifact = self.cache.commit(reservation, artifact_key, workdir, content, size)
        except MeshError:
            raise
        except Exception as exc:
            log.exception("%s: download failed", what)
            raise MeshError(f"{what}: download failed: {type(exc).__name__}: {exc}") from exc
        finally:
            if workdir.exists():
                await asyncio.to_thread(archive.remove_tree, workdir)
            if reservation is not None:
                reservation.close()
        self._metrics.download_seconds.labels(fetcher.kind).observe(time.perf_counter() - started)
        return artifact

    async def _single(
        self,
        fetcher: Fetcher,
        info: ObjectInfo,
        workdir: Path,
        reservation: Reservation,
        opts: StorageRef,
        what: str,
    ) -> tuple[PurePosixPath, int]:
        name = PurePosixPath(info.key).name
        kind = archive.archive_kind(name) if opts.unpack is not Unpack.FALSE else None
        if opts.unpack is Unpack.TRUE and kind is None:
            raise InvalidRequest(f"{what}: unpack=true, but {name!r} is no .tar, .tar.gz, .zip")
        data = workdir / "data"
        await asyncio.to_thread(data.mkdir)
        if kind is None:
            got = await self._transfer.download(
                fetcher,
                info.key,
                data / name,
                known=info,
                sha256=opts.sha256 or None,
                resize=reservation.resize,
            )
            return PurePosixPath("data", name), got.size
        packed = workdir / f"archive-{name}"
        got = await self._transfer.download(
            fetcher,
            info.key,
            packed,
            known=info,
            sha256=opts.sha256 or None,
            resize=reservation.resize,
        )
        bound = min(self._archive.max_bytes, self.cache.capacity)
        plan = await asyncio.to_thread(
            archive.plan,
            packed,
            kind,
            max_bytes=bound,
            max_members=self._archive.max_members,
            what=what,
        )
        # Archive and its members are on disk together until the archive goes.
        await reservation.resize(plan.total)
        size = await asyncio.to_thread(archive.unpack, packed, plan, data, what=what)
        await asyncio.to_thread(packed.unlink)
        await reservation.resize(-got.size)
        top = await asyncio.to_thread(archive.single_directory, data)
        return PurePosixPath(top.relative_to(workdir).as_posix()), size

    async def _listing(
        self, fetcher: Fetcher, key: str, what: str
    ) -> list[tuple[PurePosixPath, ObjectInfo]]:
        if not fetcher.can_list:
            raise ArtifactNotFound(
                f"{what}: no such object (and {fetcher.kind} storage cannot list a prefix)"
            )
        listed = await self._transfer.retrying(lambda: fetcher.list(key))
        objects: list[tuple[PurePosixPath, ObjectInfo]] = []
        for info in listed:
            if info.key.endswith("/") and info.size == 0:
                continue  # a "directory" marker some tools write
            if not info.key.startswith(key + "/"):
                raise StorageConfigError(f"{what}: the store listed {info.key!r} under it")
            rel = safe_relative(info.key[len(key) + 1 :], f"{what}: object {info.key!r}")
            objects.append((rel, info))
        if not objects:
            raise ArtifactNotFound(f"{what}: no object and no prefix by that name")
        files = {rel for rel, _ in objects}
        for rel in files:
            for parent in rel.parents:
                if parent in files:
                    raise InvalidRequest(
                        f"{what}: {parent} is both an object and a prefix: cannot be a directory"
                    )
        return objects

    async def _prefix(
        self,
        fetcher: Fetcher,
        objects: list[tuple[PurePosixPath, ObjectInfo]],
        workdir: Path,
        reservation: Reservation,
    ) -> tuple[PurePosixPath, int]:
        data = workdir / "data"

        def make_dirs() -> None:
            for rel, _ in objects:
                (data / rel.parent).mkdir(parents=True, exist_ok=True)

        await asyncio.to_thread(make_dirs)
        gate = asyncio.Semaphore(_FILES_AT_ONCE)
        sizes: list[int] = []

        async def one(rel: PurePosixPath, info: ObjectInfo) -> None:
            async with gate:
                got = await self._transfer.download(
                    fetcher, info.key, data / rel, known=info, resize=reservation.resize
                )
                sizes.append(got.size)

        await run_all(one(rel, info) for rel, info in objects)
        return PurePosixPath("data"), sum(sizes)
