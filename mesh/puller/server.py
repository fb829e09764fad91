"""The puller's composition root: settings in, a listening gRPC server and metrics endpoint out.

    async with PullerServer(PullerSettings(listen="unix:/run/mesh/puller.sock")) as puller:
        await puller.wait_for_termination()

`start()` indexes the cache directory (wiping unfinished downloads), then listens, and returns
once it does; `aclose()` refuses new calls, lets pulls in flight finish (up to drain_timeout),
then cancels what is left and removes their partial files.

How it fails: settings the cache or the listener cannot use raise InvalidRequest from
`start()` (`mesh puller` exits with status 2); nothing is left listening.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

from grpc import aio
from prometheus_client import CollectorRegistry

from mesh.errors import InvalidRequest
from mesh.grpcutil import ErrorInterceptor
from mesh.lifecycle import MetricsEndpoint, Service, check_port_free
from mesh.puller.cache import DiskCache
from mesh.puller.core import ArchiveBound, Puller
from mesh.puller.fetcher import ClientPolicy
from mesh.puller.metrics import PullerMetrics
from mesh.puller.service import PullerService
from mesh.puller.settings import PullerSettings
from mesh.puller.storage import StorageConfigSource
from mesh.puller.transfer import Transfer, TransferPolicy
from mesh.retry import Backoff

log = logging.getLogger(__name__)


def build_puller(settings: PullerSettings, registry: CollectorRegistry) -> Puller:
    """The core, from settings (no I/O: `cache.recover()` is the caller's)."""
    s = settings
    metrics = PullerMetrics(registry)
    cache = DiskCache(s.cache_dir, s.cache_bytes, metrics)
    transfer = Transfer(
        TransferPolicy(
            range_bytes=s.range_size,
            retries=s.retries,
            backoff=Backoff(initial=s.retry_initial, maximum=s.retry_max),
            verify=s.verify_checksums,
        ),
        requests=asyncio.Semaphore(s.concurrency),
        metrics=metrics,
    )
    return Puller(
        cache=cache,
        config=StorageConfigSource(s.storage_config),
        transfer=transfer,
        metrics=metrics,
        client_policy=ClientPolicy(
            connect_timeout=s.connect_timeout,
            request_timeout=s.request_timeout,
            stall_timeout=s.stall_timeout,
        ),
        pvc_root=s.pvc_root,
        archive_bound=ArchiveBound(s.archive_max_bytes, s.archive_max_members),
    )


class PullerServer(Service):
    def __init__(
        self, settings: PullerSettings, *, registry: CollectorRegistry | None = None
    ) -> None:
        self.settings = settings
        super().__init__()
        self.registry = registry or CollectorRegistry()
        self.puller: Puller | None = None
        self.address = ""
        self.port = 0
        self.metrics_port: int | None = None
        self._server: aio.Server | None = None
        self._metrics = MetricsEndpoint()

    async def start(self) -> None:
        s = self.settings
        puller = build_puller(s, self.registry)
        try:
            await asyncio.to_thread(puller.cache.recover)
        except OSError as exc:
            raise InvalidRequest(f"cache directory {s.cache_dir}: {exc.strerror}") from exc
        address = s.grpc_address()
        if address.startswith("unix:"):
            _prepare_socket(_socket_path(address))
        server = aio.server(interceptors=[ErrorInterceptor()], options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers((PullerService(puller).handler(),))
        if not address.startswith("unix:"):
            host, _, port = address.rpartition(":")
            if port.isdigit():
                check_port_free(host.strip("[]") or "0.0.0.0", int(port), "the puller; --listen")
        try:
            self.port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise InvalidRequest(f"cannot listen on {address}: {exc}") from exc
        if self.port == 0 and not address.startswith("unix:"):
            raise InvalidRequest(f"cannot listen on {address}")
        await server.start()
        self._server = server
        self.puller = puller
        self.address = (
            address if address.startswith("unix:") else f"{address.rpartition(':')[0]}:{self.port}"
        )
        if s.metrics.metrics_port is not None:
            self.metrics_port = self._metrics.start(
                s.metrics.metrics_port, s.metrics.metrics_host, self.registry
            )
        log.info(
            "puller listening on %s (metrics %s), cache %s of %d bytes, storage config %s",
            self.address,
            self.metrics_port,
            s.cache_dir,
            s.cache_bytes,
            s.storage_config,
        )

    async def aclose(self) -> None:
        if self._server is None or self.puller is None:
            return
        server, self._server = self._server, None
        await server.stop(grace=self.settings.drain_timeout)
        await self.puller.aclose()
        self._metrics.close()
        if self.address.startswith("unix:"):
            _socket_path(self.address).unlink(missing_ok=True)
        self._stopped.set()
        log.info("puller stopped")


def _socket_path(address: str) -> Path:
    return Path(address.removeprefix("unix:").removeprefix("//"))


def _prepare_socket(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_socket():
        os.unlink(path)  # left by a previous run


async def serve(settings: PullerSettings) -> None:
    """Run a puller until SIGTERM or SIGINT, then drain and exit."""
    puller = PullerServer(settings)
    await puller.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("signal received: draining")
    await puller.aclose()
