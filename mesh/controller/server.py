"""The controller's composition root: settings in, a running controller until SIGTERM."""

from __future__ import annotations

import logging
import signal
import socket
import threading
from typing import Any

from prometheus_client import CollectorRegistry

from mesh.controller import inferenceservice as isvc
from mesh.controller.controller import Controller, ControllerPolicy
from mesh.controller.kinds import INFERENCE_SERVICE
from mesh.controller.kube import EventRecorder, LeaseLock, PoolApi, PredictorApi
from mesh.controller.meshapi import MeshApi
from mesh.controller.metrics import ControllerMetrics
from mesh.controller.pools import Pools, PoolSettings
from mesh.controller.runtimes import PodTemplate
from mesh.controller.settings import ControllerSettings
from mesh.errors import InvalidRequest
from mesh.lifecycle import MetricsEndpoint, check_port_free

log = logging.getLogger(__name__)


def api_client(settings: ControllerSettings) -> Any:
    """The Kubernetes client: a kubeconfig if given, else in-cluster, else ~/.kube/config."""
    from kubernetes import client, config

    try:
        if settings.kubeconfig is not None:
            return config.new_client_from_config(str(settings.kubeconfig))  # type: ignore[no-untyped-call]
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config()  # type: ignore[no-untyped-call]
    except (config.ConfigException, OSError) as exc:
        raise InvalidRequest(
            f"no Kubernetes API: not in a cluster and no usable kubeconfig ({exc}); "
            "pass --kubeconfig"
        ) from exc
    return client.ApiClient()


def build(
    settings: ControllerSettings, kube: Any, registry: CollectorRegistry | None = None
) -> tuple[list[Controller], MeshApi]:
    """The controllers: Predictors (running the pools, when on), and InferenceServices in
    ModelMesh mode (one Lease each, so each kind has one leader)."""
    namespace = settings.resolved_namespace()
    identity = settings.identity or socket.gethostname()
    lock = (
        LeaseLock(kube, namespace, settings.lease_name, identity, settings.lease_duration)
        if settings.leader_election
        else None
    )
    mesh = MeshApi(settings.router, settings.router_token, settings.router_ca)
    policy = ControllerPolicy(
        resync=settings.resync,
        poll=settings.poll,
        watch_timeout=settings.watch_timeout,
        lease_renew=max(settings.lease_duration / 5, 0.5),
        grpc_endpoint=settings.grpc_endpoint,
        http_endpoint=settings.http_endpoint,
    )
    metrics = ControllerMetrics(registry) if registry is not None else None
    events = EventRecorder(kube, namespace, instance=identity)
    pools = None
    if settings.pools:
        pool_settings = PoolSettings(
            interval=settings.pool_interval,
            min_pods=settings.pool_min_pods,
            max_pods=max(settings.pool_max_pods, settings.pool_min_pods),
            scale_down_after=settings.pool_scale_down_after,
            template=PodTemplate(
                image=settings.pool_image,
                etcd=settings.pool_etcd,
                etcd_prefix=settings.pool_etcd_prefix,
            ),
        )
        pools = Pools(PoolApi(kube, namespace), mesh, pool_settings, events, metrics)
    controllers = [
        Controller(
            PredictorApi(kube, namespace), mesh, policy, lock, metrics, events=events, pools=pools
        )
    ]
    if settings.inference_services:
        isvc_lock = (
            LeaseLock(
                kube, namespace, f"{settings.lease_name}-isvc", identity, settings.lease_duration
            )
            if settings.leader_election
            else None
        )
        controllers.append(
            Controller(
                PredictorApi(kube, namespace, isvc.VERSION, isvc.PLURAL),
                mesh,
                policy,
                isvc_lock,
                None,
                events=events,
                kind=INFERENCE_SERVICE,
                pools=pools,
                run_pools=False,
            )
        )
    if len(controllers) > 1:
        # A Predictor and an InferenceService of one name would be one vmodel: one holds it.
        controllers[0].contend_with(controllers[1])
    return controllers, mesh


def run(settings: ControllerSettings) -> None:
    if settings.metrics.metrics_port is not None:
        check_port_free(
            settings.metrics.metrics_host, settings.metrics.metrics_port, "--metrics-port"
        )
    registry = CollectorRegistry()
    controllers, mesh = build(settings, api_client(settings), registry)
    endpoint = MetricsEndpoint()
    if settings.metrics.metrics_port is not None:
        endpoint.start(settings.metrics.metrics_port, settings.metrics.metrics_host, registry)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    for controller in controllers:
        controller.start()
    log.info(
        "controller for %s in %s, management API at %s",
        ", ".join(c.kind.name for c in controllers),
        controllers[0].namespace,
        settings.router,
    )
    stop.wait()
    log.info("stopping")
    for controller in controllers:
        controller.stop()
    mesh.close()
    endpoint.close()
