"""The pod as a member of a mesh: its cache's state as records, published under its lease."""

from __future__ import annotations

import os
import socket
import time

from mesh.addresses import HostPort, advertised, parse_address
from mesh.cluster.codec import Keys
from mesh.cluster.etcd import EtcdConfig, EtcdStore
from mesh.cluster.mirror import Mirror
from mesh.cluster.records import (
    HOST_MODELS_PUBLISHED,
    InstanceRecord,
    PlacementRecord,
    PlacementState,
)
from mesh.cluster.registration import PodRegistration, PodState
from mesh.cluster.store import KeyValueStore
from mesh.pod.dataplane import DataPlane, ServerState
from mesh.pod.settings import PodSettings

_STATES = {"loading": PlacementState.LOADING, "loaded": PlacementState.LOADED}


def pod_state(
    plane: DataPlane, pod_id: str, address: str, labels: dict[str, str], data_address: str = ""
) -> PodState:
    view = plane.status()
    loaded = [m for m in view.models if m.state == "loaded"]
    lru = min((m.last_used or m.loaded_at for m in loaded), default=0.0)
    reading = plane.device_memory.read() if plane.device_memory is not None else None
    published = view.demoted[:HOST_MODELS_PUBLISHED]
    instance = InstanceRecord(
        pod_id=pod_id,
        address=address,
        capacity=view.capacity,
        used=view.used,
        model_count=len(loaded),
        lru_time=lru,
        loading_count=view.loading,
        in_flight=sum(m.in_flight for m in view.models),
        draining=plane.state is ServerState.DRAINING,
        runtimes=tuple(plane.runtimes.names),
        labels=dict(labels),
        updated_at=time.time(),
        host_capacity=view.host_capacity,
        host_used=view.host_used,
        host_models=tuple(d.model_id for d in published),
        host_model_bytes=tuple(d.host_bytes for d in published),
        device=reading.device if reading is not None else "",
        device_total=reading.total if reading is not None else 0,
        device_used=reading.used if reading is not None else 0,
        size_factors=dict(view.size_factors),
        data_address=data_address,
    )
    placements = [
        PlacementRecord(
            m.model_id,
            pod_id,
            _STATES[m.state],
            m.loaded_at or time.time(),
            m.size,
            last_used=m.last_used,
        )
        for m in view.models
        if m.state in _STATES
    ]
    placements += [
        PlacementRecord(f.model_id, pod_id, PlacementState.FAILED, f.at_wall, error=f.error)
        for f in view.failures
    ]
    return PodState(instance, tuple(placements))


def advertised_address(settings: PodSettings, port: int) -> str:
    if settings.advertise:
        return str(advertised(settings.advertise, port))
    host = settings.server.host
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return str(HostPort(host, port))  # an IPv6 host in brackets


def pod_id_of(settings: PodSettings) -> str:
    """The pod's id: the one configured, else the host name and the process id (two pods on one
    host never share an id by default)."""
    return settings.pod_id or f"{socket.gethostname()}-{os.getpid()}"


def not_yet_elsewhere(mirror: Mirror, pod_id: str, models: list[str]) -> list[str]:
    """Of the registered `models`, those with no loaded copy on another live pod that is not
    draining: what a draining pod still waits for before it may go."""
    waiting = []
    for model_id in models:
        if model_id not in mirror.models:
            continue  # unregistered meanwhile, or never registered: nobody will ask for it
        copies = mirror.placements.get(model_id, {})
        if not any(
            other != pod_id
            and rec.state is PlacementState.LOADED
            and (instance := mirror.instances.get(other)) is not None
            and not instance.draining
            for other, rec in copies.items()
        ):
            waiting.append(model_id)
    return waiting


def join(
    settings: PodSettings,
    plane: DataPlane,
    port: int,
    store: KeyValueStore | None = None,
    *,
    data_port: int | None = None,
) -> tuple[KeyValueStore, PodRegistration]:
    """The store and registration of a pod in a mesh (not yet started): etcd from the
    settings, or the store given (the embedded mode's in-memory store). `data_port`: the
    frame listener's, advertised on the same host as the gRPC port."""
    if store is None:
        assert settings.etcd.endpoints is not None
        config = EtcdConfig.parse(
            settings.etcd.endpoints, settings.etcd.ca, settings.etcd.cert, settings.etcd.key
        )
        store = EtcdStore(config)
    pod_id = pod_id_of(settings)
    address = advertised_address(settings, port)
    data_address = ""
    if data_port is not None:
        data_address = str(HostPort(parse_address(address).host, data_port))
    labels = dict(settings.labels)
    registration = PodRegistration(
        store,
        Keys(settings.etcd.prefix),
        lambda: pod_state(plane, pod_id, address, labels, data_address),
        ttl=settings.lease_ttl,
    )
    plane.cache.subscribe(registration.notify)
    return store, registration
