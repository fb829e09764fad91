"""The router's composition root: settings in, a listening router out.

async with RouterServer(RouterSettings(etcd="http://127.0.0.1:2379", port=0)) as router:
    print(router.port)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time

import grpc
from grpc import aio
from prometheus_client import CollectorRegistry

from mesh.cluster.codec import Keys
from mesh.cluster.election import LeaderElection
from mesh.cluster.etcd import EtcdConfig, EtcdStore
from mesh.cluster.lease import LeaseKeeper
from mesh.cluster.mirror import Change, Mirror
from mesh.cluster.store import KeyValueStore
from mesh.errors import InvalidRequest, MeshError
from mesh.grpcutil import ErrorInterceptor
from mesh.health import Health
from mesh.http.app import HttpApp, server_tls
from mesh.http.v2 import V2Endpoints
from mesh.lifecycle import MetricsEndpoint, Service, check_port_free, stop_task
from mesh.llm import openai as openai_routes
from mesh.llm.backends import RouterBackend as TextBackend
from mesh.placement.copies import CopyPolicy
from mesh.retry import Backoff
from mesh.router import dashboard
from mesh.router.background import LeaderWork
from mesh.router.core import Router
from mesh.router.grpcpods import GrpcPods
from mesh.router.held import HeldRequests, HoldPolicy
from mesh.router.management import Management
from mesh.router.metrics import RouterMetrics
from mesh.router.overview import Overview, snapshot
from mesh.router.pods import PodPool
from mesh.router.policy import RouterPolicy
from mesh.router.rest import RouterBackend
from mesh.router.service import ManagementService, RouterInference
from mesh.router.settings import RouterSettings
from mesh.tls import ClientCredentials

log = logging.getLogger(__name__)


class RouterLease:
    """The router's own lease, for its load claims: kept alive from a thread, renewed if lost."""

    def __init__(self, store: KeyValueStore, ttl: int) -> None:
        self._store = store
        self._ttl = ttl
        self.id = 0
        self._keeper: LeaseKeeper | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        delays = Backoff(0.2, 3.0).delays()
        loop = asyncio.get_running_loop()
        while True:
            try:
                self.id = await self._store.grant(self._ttl)
                self._lost.clear()

                def lost(lease: int) -> None:
                    with contextlib.suppress(RuntimeError):
                        loop.call_soon_threadsafe(self._lost.set)

                reconnect = getattr(self._store, "reconnect", None)
                self._keeper = LeaseKeeper(
                    reconnect if reconnect is not None else (lambda: self._store),
                    self.id, self._ttl, lost, owns_store=reconnect is not None,
                )  # fmt: skip
                self._keeper.start()
                delays = Backoff(0.2, 3.0).delays()
                await self._lost.wait()
                self._keeper.stop()
            except MeshError as exc:
                log.warning("router lease: %s", exc)
                await asyncio.sleep(next(delays))

    async def aclose(self) -> None:
        await stop_task(self._task, "the router's lease task")
        if self._keeper is not None:
            self._keeper.stop()
        if self.id:
            with contextlib.suppress(MeshError, TimeoutError):
                await asyncio.wait_for(self._store.revoke(self.id), 5)


class RouterServer(Service):
    def __init__(
        self,
        settings: RouterSettings,
        *,
        store: KeyValueStore | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self._given_store = store
        super().__init__()
        self.registry = registry or CollectorRegistry()
        self.port = 0
        self.rest_port: int | None = None
        self.metrics_port: int | None = None
        self.router: Router | None = None
        self.held: HeldRequests | None = None
        self.http: HttpApp | None = None
        self._metrics = MetricsEndpoint()
        self.health = Health()

    async def start(self) -> None:
        s = self.settings
        # Before anything starts: a port in use is one clear line, not a half-started router.
        check_port_free(s.server.host, s.server.port, "the router's gRPC port; --port")
        if s.server.metrics_port is not None:
            check_port_free(
                s.server.host, s.server.metrics_port, "the metrics port; --metrics-port"
            )
        if s.server.rest_port is not None:
            check_port_free(s.server.host, s.server.rest_port, "the REST port; --rest-port")
        # The pods' CA and this router's certificate, read and checked before anything starts.
        pod_tls = ClientCredentials.load(s.pod_tls, "--pod-tls")
        self.store: KeyValueStore = self._given_store or EtcdStore(
            EtcdConfig.parse(s.etcd.endpoints, s.etcd.ca, s.etcd.cert, s.etcd.key)
        )
        keys = Keys(s.etcd.prefix)
        self.mirror = Mirror(self.store, keys)
        await self.mirror.start(timeout=60)
        self.lease = RouterLease(self.store, s.lease_ttl)
        await self.lease.start()
        self.pool = PodPool(GrpcPods(s.max_message_bytes, frames=s.pod_frames, tls=pod_tls))
        metrics = RouterMetrics(self.registry)
        router_id = s.router_id or f"{socket.gethostname()}-{id(self):x}"
        self.held = (
            HeldRequests(self.store, self.mirror, s.etcd.prefix, router_id, self.lease,
                         HoldPolicy(s.max_held_requests), metrics)
            if s.max_held_requests else None
        )  # fmt: skip
        self.router = Router(
            self.store, self.mirror, keys, self.pool,
            router_id=router_id,
            lease=self.lease,
            policy=RouterPolicy(
                s.forward_attempts, s.load_attempts, s.load_timeout,
                vanished_grace=s.vanished_pod_grace, failure_ttl=s.failure_ttl,
                failure_attempts=s.failure_attempts, attempt_timeout=s.attempt_timeout,
                probe_timeout=s.probe_timeout,
            ),
            metrics=metrics,
            held=self.held,
        )  # fmt: skip
        self.mirror.subscribe(self._forget_gone_pods)
        activity = self.router.activity
        activity.seed(self.mirror)
        self.mirror.subscribe(lambda changes: activity.observe(changes, self.mirror, time.time()))
        election = LeaderElection(self.store, keys.leader, self.router.router_id, ttl=s.lease_ttl)
        copy_policy = CopyPolicy(
            add_rate=s.copy_add_rate,
            add_after=s.copy_add_after,
            remove_rate=s.copy_remove_rate,
            remove_after=s.copy_remove_after,
            half_life=s.copy_half_life,
        )
        self.leader_work = LeaderWork(
            self.router, election, metrics, s.leader_interval, copy_policy
        )
        await self.leader_work.start()
        self.management = management = Management(self.store, keys, self.router)
        inference = RouterInference(self.router, metrics, token=s.management_token)
        self.backend = RouterBackend(self.router, management, lambda: inference.ready, metrics)
        inference.attach_repository(self.backend)
        options = [
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", s.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        server = aio.server(interceptors=[ErrorInterceptor()], options=options)
        server.add_generic_rpc_handlers(
            (
                inference.handler(),
                ManagementService(management, s.management_token).handler(),
                self.health.handler(),
            )
        )
        address = f"{s.server.host}:{s.server.port}"
        if s.tls.cert is not None and s.tls.key is not None:
            creds = grpc.ssl_server_credentials(
                [(s.tls.key.read_bytes(), s.tls.cert.read_bytes())],
                root_certificates=s.tls.ca.read_bytes() if s.tls.ca else None,
                require_client_auth=s.tls.ca is not None,
            )
            self.port = server.add_secure_port(address, creds)
        else:
            self.port = server.add_insecure_port(address)
        if self.port == 0:
            raise InvalidRequest(f"cannot listen on {address}")
        await server.start()
        self._server = server
        if s.server.rest_port is not None:
            self.http = HttpApp(s.max_message_bytes)
            self._mount_http(self.http)
            tls = server_tls(s.tls.cert, s.tls.key, s.tls.ca) if s.tls.cert and s.tls.key else None
            try:
                self.rest_port = await self.http.start(s.server.host, s.server.rest_port, tls)
            except MeshError:
                self.http = None
                await self.aclose()  # what started so far, so that the process can exit
                raise
        if s.server.metrics_port is not None:
            self.metrics_port = self._metrics.start(
                s.server.metrics_port, s.server.host, self.registry
            )
        inference.ready = True
        self.health.serving()
        log.info(
            "router listening on %s:%d (REST %s), etcd %s prefix %s, pods over %s",
            s.server.host, self.port, self.rest_port or "off", s.etcd.endpoints, s.etcd.prefix,
            "TLS" if pod_tls is not None else "plaintext",
        )  # fmt: skip

    def _mount_http(self, app: HttpApp) -> None:
        """Every route of the router's HTTP port. Components add theirs here, one call each,
        with what they need of the router (mesh.http.app says how)."""
        app.mount_v2(V2Endpoints(self.backend), control_token=self.settings.management_token)
        dashboard.mount(app, self.overview, self.settings.management_token)
        assert self.router is not None  # built before the HTTP app
        openai_routes.mount(app, TextBackend(self.router))

    def overview(self) -> Overview:
        """The mesh at a glance, from this router's mirror (the capacity page, mesh status)."""
        assert self.router is not None
        return snapshot(
            self.mirror, self.router.activity, self.router.failures, time.time(),
            self.management.transition_errors,
        )  # fmt: skip

    def _forget_gone_pods(self, changes: list[Change]) -> None:
        assert self.router is not None
        for pod_id in self.router.observe(changes):
            self.pool.forget(pod_id)

    async def aclose(self) -> None:
        self.health.not_serving()
        if self.http is not None:
            await self.http.aclose()
        await self._server.stop(grace=5)
        await self.leader_work.aclose()
        if self.held is not None:
            await self.held.aclose()
        await self.lease.aclose()
        await self.mirror.aclose()
        await self.pool.aclose()
        if self._given_store is None:
            await self.store.aclose()
        self._metrics.close()
        self._stopped.set()


async def serve(settings: RouterSettings) -> None:
    router = RouterServer(settings)
    await router.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await router.aclose()
