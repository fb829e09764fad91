"""`mesh up`'s pods as processes: each pod with its puller, started and stopped one at a time.

    pods = LocalPods(LocalPodSpec(mesh=[sys.executable, "-m", "mesh"], etcd=url, ...))
    pod_id = pods.start_pod()     # a puller, then a pod beside it; returns at once
    pods.stop_pod(pod_id)         # SIGTERM: the pod drains (hand-off), exits; then its puller
    for gone in pods.reap():      # pods whose process ended, asked to or not
        ...

Each pod gets a fresh id (`pod-0`, `pod-1`, ...), fresh ports and a cache directory of its own.
A pod that exits with EX_TEMPFAIL (75) recycled itself (a runtime kept device memory): `reap`
says so, and the caller replaces it. Safe to call from several threads (one lock).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXIT_RECYCLE = os.EX_TEMPFAIL  # what a recycling pod exits with (mesh.pod.server)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True, slots=True)
class LocalPodSpec:
    """What every local pod is started with."""

    mesh: list[str]  # the command that runs `mesh` (with the die-with-parent prefix)
    etcd: str
    prefix: str
    host: str
    capacity: str
    cache_bytes: int
    storage_config: Path
    workdir: Path  # sockets and puller caches
    # Seconds a draining pod waits for its models to be loaded elsewhere (0: none).
    handoff_timeout: float = 0.0
    spawn: dict[str, Any] = field(default_factory=dict)
    # Flags every pod gets besides these (`mesh up --internal-tls`: its certificate's).
    pod_args: tuple[str, ...] = ()


@dataclass(slots=True)
class LocalPod:
    pod_id: str
    port: int
    metrics_port: int
    puller_socket: str
    pod: subprocess.Popen[bytes]
    puller: subprocess.Popen[bytes]
    stopping: bool = False


@dataclass(frozen=True, slots=True)
class Exited:
    pod_id: str
    returncode: int
    asked: bool  # stopped by stop_pod (scale down) rather than on its own

    @property
    def recycled(self) -> bool:
        return self.returncode == EXIT_RECYCLE


class LocalPods:
    def __init__(self, spec: LocalPodSpec) -> None:
        self.spec = spec
        self._pods: dict[str, LocalPod] = {}
        self._next = 0
        self._lock = threading.Lock()
        self.closed = False

    def start_pod(self) -> str:
        s = self.spec
        with self._lock:
            if self.closed:
                raise RuntimeError("mesh up is stopping: no new pods")
            n = self._next
            self._next += 1
            pod_id = f"pod-{n}"
            socket_path = f"unix:{s.workdir}/puller-{n}.sock"
            puller = subprocess.Popen(
                [*s.mesh, "puller", "--listen", socket_path, "--no-metrics",
                 "--cache-dir", f"{s.workdir}/cache-{n}", "--cache-bytes", str(s.cache_bytes),
                 "--storage-config", str(s.storage_config), "--log-level", "WARNING"],
                **s.spawn,
            )  # fmt: skip
            port, metrics = _free_port(), _free_port()
            pod = subprocess.Popen(
                [*s.mesh, "pod", "--etcd", s.etcd, "--etcd-prefix", s.prefix,
                 "--pod-id", pod_id, "--host", s.host, "--port", str(port),
                 "--metrics-port", str(metrics), "--capacity", s.capacity,
                 "--puller", socket_path, "--handoff-timeout", str(s.handoff_timeout),
                 *s.pod_args],
                **s.spawn,
            )  # fmt: skip
            self._pods[pod_id] = LocalPod(pod_id, port, metrics, socket_path, pod, puller)
            return pod_id

    def stop_pod(self, pod_id: str) -> bool:
        """Ask a pod to drain and exit (SIGTERM); False if it is not running or already asked."""
        with self._lock:
            pod = self._pods.get(pod_id)
            if pod is None or pod.stopping or pod.pod.poll() is not None:
                return False
            pod.stopping = True
            pod.pod.send_signal(signal.SIGTERM)
            return True

    def reap(self) -> list[Exited]:
        """Pods whose process ended since the last call; their pullers are stopped."""
        gone: list[LocalPod] = []
        with self._lock:
            for pod_id, pod in list(self._pods.items()):
                if pod.pod.poll() is not None:
                    gone.append(self._pods.pop(pod_id))
        for pod in gone:
            if pod.puller.poll() is None:
                pod.puller.send_signal(signal.SIGTERM)
                try:
                    pod.puller.wait(15)
                except subprocess.TimeoutExpired:
                    pod.puller.kill()
                    pod.puller.wait()
        return [Exited(p.pod_id, int(p.pod.returncode), p.stopping) for p in gone]

    def running(self) -> set[str]:
        """Pods whose process runs and that were not asked to stop."""
        with self._lock:
            return {i for i, p in self._pods.items() if not p.stopping and p.pod.poll() is None}

    def stopping(self) -> set[str]:
        with self._lock:
            return {i for i, p in self._pods.items() if p.stopping and p.pod.poll() is None}

    def pods(self) -> list[LocalPod]:
        with self._lock:
            return list(self._pods.values())

    def children(self) -> list[tuple[str, subprocess.Popen[bytes]]]:
        """Every process, named as `mesh up` stops them in stages (pods, then pullers)."""
        with self._lock:
            found: list[tuple[str, subprocess.Popen[bytes]]] = []
            for pod in self._pods.values():
                found.append((pod.pod_id, pod.pod))
                found.append((f"puller-{pod.pod_id.removeprefix('pod-')}", pod.puller))
            return found

    def close(self) -> None:
        """No pod starts after this (mesh up is stopping)."""
        with self._lock:
            self.closed = True
