"""`mesh serve --models DIR`: the whole mesh in one process, for a laptop or a single VM.

A router, one pod and a local file store share one event loop and an in-memory cluster store:
no etcd, no cluster. Every model under DIR is registered by its name (the directory or file
name, as `mesh pod --models` serves them) and loads on its first request; the pod evicts the
least recently used when its capacity is reached. The router's port speaks the whole v2 API and
the management API, so `mesh register` adds models from elsewhere on the disk too; its REST
port (--rest-port, 8008) speaks the v2 REST API (`curl localhost:8008/v2/health/ready`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path
from typing import Annotated, Any

from prometheus_client import CollectorRegistry
from pydantic import Field

from mesh.cluster.codec import Keys, encode
from mesh.cluster.memory import MemoryStore
from mesh.cluster.records import ModelRecord
from mesh.errors import MeshError
from mesh.pod.artifacts import DirectoryArtifacts
from mesh.pod.repository import ModelRepository
from mesh.pod.server import PodServer
from mesh.pod.settings import PodSettings
from mesh.pod.wire import wire_infer
from mesh.router.server import RouterServer
from mesh.router.settings import RouterSettings
from mesh.runtimes.registry import RuntimeRegistry
from mesh.settings import CommandSettings, Nested, ServerSettings
from mesh.storageref import StorageRef
from mesh.units import ByteSize

log = logging.getLogger(__name__)


async def register_directory(store: MemoryStore, keys: Keys, models: Path) -> list[str]:
    """Register every model under `models` by name; the ones that cannot be read are skipped."""
    runtimes = RuntimeRegistry.discover()
    repository = ModelRepository(models, runtimes)
    registered = []
    for name in repository.names():
        try:
            source = repository.resolve(name)
        except MeshError as exc:
            log.warning("skipping %s: %s", name, exc)
            continue
        path = source.file.parent if source.file.parent != models else source.file
        # An adapter names its base: the router loads it beside the base.
        record = ModelRecord(
            name, source.format, storage=StorageRef(path=str(path.relative_to(models))),
            registered_at=time.time(), base=source.base or "",
        )  # fmt: skip
        await store.put(keys.model(name), encode(record))
        registered.append(name)
    return registered


class ServeSettings(CommandSettings, env_prefix="MESH_SERVE_"):
    """Every knob of `mesh serve`."""

    models: Path = Field(description="directory of models, each registered by its name")
    # The router's ports; the pod beside it opens none.
    server: Annotated[ServerSettings, Nested(prefix="")] = ServerSettings(
        host="127.0.0.1", port=8033, rest_port=8008, metrics_port=2112
    )
    capacity: ByteSize | None = Field(
        None, gt=0, description="bytes of models to hold, e.g. 4Gi (unset: as `mesh pod`)"
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR")
    log_json: bool = Field(False, description="log JSON lines")


async def serve_settings(settings: ServeSettings) -> None:
    """`mesh serve` with its settings: until SIGTERM or SIGINT."""
    s = settings.server
    await serve(
        settings.models, s.port, s.host, settings.capacity, s.rest_port, metrics_port=s.metrics_port
    )


async def serve(
    models: Path,
    port: int,
    host: str,
    capacity: str | int | None,
    rest_port: int | None = 8008,
    *,
    metrics_port: int | None = 2112,
) -> None:
    store = MemoryStore()
    keys = Keys()
    names = await register_directory(store, keys, models)
    overrides: dict[str, Any] = {"capacity": capacity} if capacity else {}
    pod_settings = PodSettings(
        server=ServerSettings(host="127.0.0.1", port=0, metrics_port=None),
        data_port=None,  # the router calls the data plane in process: no port to open
        pod_id="embedded",
        **overrides,
    )
    # One registry: the metrics port shows the pod's metrics (loads, evictions, memory) beside
    # the router's, as `mesh pod` and `mesh router` would on ports of their own.
    registry = CollectorRegistry()
    pod = PodServer(
        pod_settings, artifacts=DirectoryArtifacts(models), store=store, registry=registry
    )
    await pod.start()
    router_settings = RouterSettings(
        server=ServerSettings(host=host, port=port, rest_port=rest_port, metrics_port=metrics_port)
    )
    router = RouterServer(router_settings, store=store, registry=registry)
    try:
        await router.start()
    except BaseException:
        await pod.aclose()
        raise
    # The router reaches its pod's data plane by a call, not a loopback gRPC hop.
    assert pod.plane is not None  # started
    router.pool.serve_in_process("embedded", wire_infer(pod.plane))
    log.info(
        "mesh serve: %d models from %s on %s:%d (gRPC), REST %s",
        len(names), models, host, router.port, router.rest_port or "off",
    )  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await router.aclose()
    await pod.aclose()
    await store.aclose()
