"""The pod's composition root: settings in, a listening gRPC server and metrics endpoint out.

    async with PodServer(PodSettings(models=Path("models"), port=0)) as pod:
        print(pod.port)          # the bound port
        await pod.wait_for_termination()

`start()` returns once listening; `aclose()` drains: readiness turns false, the pod is marked
draining in the mesh (routers send it no new requests and their leader loads its models on
other pods, most recently used first), it waits until its models are loaded elsewhere (up to
`handoff_timeout`) while still serving what reaches it, then refuses new calls, lets those in
flight finish (up to `drain_timeout`) and unloads every model.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections.abc import Callable
from typing import Any

from grpc import aio
from prometheus_client import CollectorRegistry

from mesh.cluster.codec import Keys
from mesh.cluster.mirror import Mirror
from mesh.cluster.registration import PodRegistration
from mesh.cluster.store import KeyValueStore
from mesh.errors import InvalidRequest, MeshError
from mesh.frames import FrameServer
from mesh.grpcstatus import status_name
from mesh.grpcutil import ErrorInterceptor
from mesh.health import Health
from mesh.http.app import HttpApp
from mesh.http.v2 import V2Endpoints
from mesh.lifecycle import MetricsEndpoint, Service, check_port_free
from mesh.llm import openai as openai_routes
from mesh.llm.backends import PodBackend as TextBackend
from mesh.pod.artifacts import DirectoryArtifacts
from mesh.pod.cache import ModelCache
from mesh.pod.capacity import choose_device, default_capacity
from mesh.pod.dataplane import ArtifactSource, DataPlane
from mesh.pod.devices import DeviceMemory, HostMemory, device_memory_for, used_meter
from mesh.pod.hosttier import HostTier
from mesh.pod.membership import join, not_yet_elsewhere, pod_id_of
from mesh.pod.memory import pin_malloc_thresholds, rss_bytes
from mesh.pod.metrics import PodMetrics
from mesh.pod.recycle import UnloadAudit, UnloadCheck
from mesh.pod.repository import ModelRepository
from mesh.pod.rest import PodBackend
from mesh.pod.service import InferenceService, RuntimeService
from mesh.pod.settings import PodSettings
from mesh.pod.wire import wire_infer
from mesh.puller.client import PullerClient
from mesh.runtimes.base import Device
from mesh.runtimes.registry import RuntimeRegistry
from mesh.tls import ServerCredentials

log = logging.getLogger(__name__)


class PodServer(Service):
    def __init__(
        self,
        settings: PodSettings,
        *,
        runtimes: RuntimeRegistry | None = None,
        registry: CollectorRegistry | None = None,
        artifacts: ArtifactSource | None = None,
        store: KeyValueStore | None = None,
        device_memory: DeviceMemory | None = None,
    ) -> None:
        """`device_memory`: where the device tier's memory is measured (tests pass a
        FakeDevice); by default NVML or torch on a GPU pod, the host otherwise."""
        self.settings = settings
        self._device_memory = device_memory
        self._given_store = store
        self._runtimes = runtimes
        self._artifacts = artifacts
        self._puller: PullerClient | None = None
        if artifacts is None and settings.puller:
            self._artifacts = self._puller = PullerClient(settings.puller)
        elif artifacts is None and settings.storage_dir is not None:
            self._artifacts = DirectoryArtifacts(settings.storage_dir)
        super().__init__()
        self.registry = registry or CollectorRegistry()
        self.plane: DataPlane | None = None
        self.port = 0
        self.metrics_port: int | None = None
        self.rest_port: int | None = None
        # The frame listener's port (mesh.frames; --data-port), None when it has none.
        self.data_port: int | None = None
        self._frames: FrameServer | None = None
        self._http: HttpApp | None = None
        self._server: aio.Server | None = None
        self._metrics = MetricsEndpoint()
        self.health = Health()
        self._store: KeyValueStore | None = None
        self.registration: PodRegistration | None = None
        # Set once a runtime kept device memory past its bound: the pod drains and exits.
        self.recycling: str | None = None
        self.recycle_requested = asyncio.Event()
        self.metrics: PodMetrics | None = None

    async def start(self) -> None:
        s = self.settings
        # Before anything starts: a port in use is one clear line, not a half-started pod.
        check_port_free(s.server.host, s.server.port, "the pod's gRPC port; --port")
        if s.server.metrics_port is not None:
            check_port_free(
                s.server.host, s.server.metrics_port, "the metrics port; --metrics-port"
            )
        if s.server.rest_port is not None:
            check_port_free(s.server.host, s.server.rest_port, "the REST port; --rest-port")
        if s.data_port:
            check_port_free(s.server.host, s.data_port, "the data port; --data-port")
        # The certificate's files are read and checked before anything listens.
        tls = ServerCredentials.load(s.tls)
        runtimes = self._runtimes or RuntimeRegistry.discover(s.runtimes)
        if not runtimes.names:
            raise InvalidRequest(
                "no runtime is available: install mesh-serving[onnx], [xgboost] or [torch]"
            )
        loop = asyncio.get_running_loop()
        for name in runtimes.names:
            await loop.run_in_executor(None, runtimes.warm_up, name)
        # What is alive now lives as long as the process: keep it out of every collection, so
        # the collection after each unload walks only what models left behind.
        gc.collect()
        gc.freeze()
        pin_malloc_thresholds()  # so that a load's RSS delta is what it kept (mesh.pod.memory)
        device = choose_device(s.device, s.device_index, runtimes.names)
        memory = self._device_memory or device_memory_for(device)
        on_device = memory.tier == "device"
        capacity = s.capacity or self._default_capacity(device, memory)
        metrics = self.metrics = PodMetrics(
            self.registry,
            per_model=s.per_model_metrics,
            top_models=s.metrics_top_models,
            top_interval=s.metrics_top_interval,
        )
        _measure_on_scrape(metrics, memory)
        meter = used_meter(memory) if on_device else rss_bytes
        audit = None
        if on_device:
            audit = UnloadAudit(
                memory,
                bound=s.unload_leak_bound,
                settle=s.unload_settle,
                on_recycle=lambda runtime, unreturned: _soon(
                    loop, self._recycle, runtime, unreturned
                ),
                on_check=lambda check: _count_unreturned(metrics, check),
            )
        cache = ModelCache(
            capacity=capacity,
            runtimes=runtimes,
            device=device,
            load_concurrency=s.load_concurrency,
            load_timeout=s.load_timeout,
            min_model_age=s.min_model_age,
            failure_ttl=s.failure_ttl,
            metrics=metrics,
            meter=meter,
            host_tier=HostTier(s.host_tier) if s.host_tier else None,
            audit=audit,
            on_device=on_device,
        )
        repository = None
        if s.models is not None:
            if not s.models.is_dir():
                raise InvalidRequest(f"--models {s.models}: not a directory")
            repository = ModelRepository(s.models, runtimes)
        self.plane = DataPlane(
            cache,
            runtimes,
            repository=repository,
            workers=s.workers,
            inline_below=s.inline_below,
            device=device,
            metrics=metrics,
            artifacts=self._artifacts,
            status_label=status_name,
        )
        self.plane.device_memory = memory
        options = [
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", s.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        server = aio.server(interceptors=[ErrorInterceptor()], options=options)
        server.add_generic_rpc_handlers(
            (
                InferenceService(self.plane).handler(),
                RuntimeService(self.plane).handler(),
                self.health.handler(),
            )
        )
        address = f"{s.server.host}:{s.server.port}"
        if tls is not None:
            self.port = server.add_secure_port(address, tls.grpc)
        else:
            self.port = server.add_insecure_port(address)
        if self.port == 0:
            raise InvalidRequest(f"cannot listen on {s.server.host}:{s.server.port}")
        await server.start()
        self._server = server
        if s.data_port is not None:
            # Unary inference for routers, cheaper than a gRPC call (mesh.frames).
            self._frames = FrameServer(
                wire_infer(self.plane),
                s.max_message_bytes,
                ssl_context=tls.context if tls is not None else None,
            )
            self.data_port = await self._frames.start(s.server.host, s.data_port)
        if s.server.rest_port is not None:
            self._http = HttpApp(s.max_message_bytes)
            self._http.mount_v2(V2Endpoints(PodBackend(self.plane)))
            openai_routes.mount(self._http, TextBackend(self.plane))
            self.rest_port = await self._http.start(
                s.server.host, s.server.rest_port, tls.context if tls is not None else None
            )
        if s.server.metrics_port is not None:
            self.metrics_port = self._metrics.start(
                s.server.metrics_port, s.server.host, self.registry
            )
        if s.etcd.endpoints or self._given_store is not None:
            store, self.registration = join(
                s, self.plane, self.port, self._given_store, data_port=self.data_port
            )
            if self._given_store is None:
                self._store = store
            await self.registration.start()
        self.plane.mark_ready()
        self.health.serving()
        log.info(
            "pod listening on %s:%d (%s, metrics %s), device %s (memory from %s), capacity %d "
            "bytes, host tier %d bytes, runtimes %s%s",
            s.server.host,
            self.port,
            "mutual TLS" if tls is not None else "plaintext",
            self.metrics_port,
            device,
            memory.name,
            capacity,
            s.host_tier,
            runtimes.names,
            f", models from {s.models}" if s.models else "",
        )

    def _default_capacity(self, device: Device, memory: DeviceMemory) -> int:
        s = self.settings
        if memory.tier == "device":
            # The device's own total, as measured (NVML serves an ONNX-only GPU pod, where
            # torch is not there to ask; tests give a FakeDevice).
            reading = memory.read()
            if reading is not None:
                return max(reading.total - s.reserve, reading.total // 10)
        return default_capacity(
            device, s.reserve, memory_limit=s.memory_limit, host_tier=s.host_tier
        )

    def _recycle(self, runtime: str, unreturned: int) -> None:
        """A runtime kept device memory past the bound: stop taking work, and ask to be
        replaced (serve() drains and exits with EXIT_RECYCLE)."""
        if self.recycling is not None or self.plane is None:
            return
        self.recycling = runtime
        if self.metrics is not None:
            self.metrics.recycles.labels(runtime).inc()
        self.health.not_serving()
        self.plane.drain()
        if self.registration is not None:
            self.registration.notify()  # routers stop choosing this pod at once
        self.recycle_requested.set()

    async def aclose(self) -> None:
        """Drain: readiness turns false at once, requests in flight finish, then stop."""
        if self._server is None or self.plane is None:
            return
        server, self._server = self._server, None
        self.health.not_serving()  # readiness fails at once
        self.plane.drain()
        if self.registration is not None:
            self.registration.notify()
            # Written before anything else: a drain with no hand-off reaches the lease's
            # revocation within moments, and routers then saw the pod vanish, never drain.
            await self.registration.publish_now()
        if self.registration is not None and self._store is not None:
            await self._hand_off(self._store, self.settings.handoff_timeout)
        # Refuses new calls at once and waits for those in flight, up to the grace period.
        if self._http is not None:
            await self._http.aclose()
        grace = self.settings.drain_timeout
        if self._frames is not None:
            await asyncio.gather(server.stop(grace=grace), self._frames.aclose(grace=grace))
        else:
            await server.stop(grace=grace)
        await self.plane.aclose()
        if self.registration is not None:
            await self.registration.aclose(revoke=True)
        if self._store is not None:
            await self._store.aclose()
        if self._puller is not None:
            await self._puller.aclose()
        self._metrics.close()
        self._stopped.set()
        log.info("pod stopped")

    async def _hand_off(self, store: KeyValueStore, timeout: float) -> None:
        """Wait until every registered model this pod holds is loaded on another pod."""
        assert self.plane is not None
        held = self.plane.cache.loaded_ids()
        if not held or timeout <= 0:
            return
        pod_id = pod_id_of(self.settings)
        mirror = Mirror(store, Keys(self.settings.etcd.prefix))
        started = time.monotonic()
        synced = False
        try:
            await mirror.start(timeout=min(timeout, 10))
            synced = True
            # Done when every model has a copy elsewhere, or when no other pod could take one.
            await mirror.wait_for(
                lambda m: (
                    not not_yet_elsewhere(m, pod_id, held)
                    or not any(i.pod_id != pod_id and not i.draining for i in m.instances.values())
                ),
                timeout=max(timeout - (time.monotonic() - started), 0.001),
            )
            left = not_yet_elsewhere(mirror, pod_id, held)
            log.info(
                "drain: %d of %d models loaded elsewhere after %.1f s%s",
                len(held) - len(left),
                len(held),
                time.monotonic() - started,
                " (no other pod can take the rest)" if left else "",
            )
        except (TimeoutError, MeshError):
            left = not_yet_elsewhere(mirror, pod_id, held) if synced else held
            log.warning(
                "drain: after %.1f s, %d of %d models are loaded nowhere else (%s); leaving",
                time.monotonic() - started,
                len(left),
                len(held),
                ", ".join(left[:10]) + (", ..." if len(left) > 10 else ""),
            )
        finally:
            await mirror.aclose()


# The exit status of a pod that recycled itself (EX_TEMPFAIL): its orchestrator restarts it.
EXIT_RECYCLE = 75


async def serve(
    settings: PodSettings,
    runtimes: RuntimeRegistry | None = None,
    *,
    device_memory: DeviceMemory | None = None,
    started: Callable[[PodServer], None] | None = None,
) -> int:
    """Run a pod until SIGTERM or SIGINT, or until it must recycle; drain; the exit status.

    `started` is called with the pod once it listens (tests)."""
    pod = PodServer(settings, runtimes=runtimes, device_memory=device_memory)
    await pod.start()
    if started is not None:
        started(pod)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    registration = pod.registration
    waits = [
        asyncio.ensure_future(stop.wait()),
        asyncio.ensure_future(pod.recycle_requested.wait()),
    ]
    if registration is not None:
        waits.append(asyncio.ensure_future(registration.conflicted.wait()))
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in waits:
        wait.cancel()
    if registration is not None and registration.conflict is not None:
        await pod.aclose()
        raise registration.conflict  # another live process has this pod id: exit, saying so
    if pod.recycling is not None:
        log.error("runtime %s kept device memory: draining to be replaced", pod.recycling)
    else:
        log.info("signal received: draining")
    await pod.aclose()
    return EXIT_RECYCLE if pod.recycling is not None else 0


def _measure_on_scrape(metrics: PodMetrics, memory: DeviceMemory) -> None:
    """The device's (and, on a GPU pod, the host's) measured memory, read at each scrape."""
    sources = [memory] if memory.tier == "host" else [memory, HostMemory()]
    for source in sources:
        for kind in ("total", "used"):

            def read(source: DeviceMemory = source, kind: str = kind) -> float:
                reading = source.read()
                if reading is None:
                    return float("nan")
                return float(reading.total if kind == "total" else reading.used)

            metrics.device_memory.labels(source.name, kind).set_function(read)


def _soon(loop: asyncio.AbstractEventLoop, fn: Callable[[str, int], None], *args: Any) -> None:
    loop.call_soon_threadsafe(fn, *args)


def _count_unreturned(metrics: PodMetrics, check: UnloadCheck) -> None:
    metrics.unreturned.labels(check.runtime).set(check.unreturned)
