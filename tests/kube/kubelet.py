"""The fake API server's kubelet: Deployments become real processes on this machine.

What a ReplicaSet controller and a kubelet do together, as far as a test of pools needs it:
every Deployment in the store gets ``spec.replicas`` running pods. Each pod is a Pod object in
the store (name ``<deployment>-<5 letters>``, the template's labels, ``status.phase``) and a
real process for each container the test gives a launcher for (a container without one is not
run: the test stands in for it, e.g. a storage directory instead of the puller). When the
replicas go down the newest pods go first, as a ReplicaSet prefers (the lowest
``controller.kubernetes.io/pod-deletion-cost`` first, where a pod has one): SIGTERM, the grace
period of the template, then SIGKILL. A pod whose process exits is restarted, as
``restartPolicy: Always`` does, and its Pod's ``status.containerStatuses[].restartCount`` counts
it. The Deployment's status (``replicas``, ``readyReplicas``, ``availableReplicas``,
``observedGeneration``) is written through its status subresource. A pod counts as ready while
its processes run (no probes are run). A deleted Deployment's pods are stopped.

Environment: a container's ``env`` is resolved as the kubelet would (``value`` with ``$(VAR)``
expansion, ``fieldRef`` ``metadata.name``/``metadata.namespace``/``status.podIP`` (127.0.0.1));
``resourceFieldRef`` and ``secretKeyRef`` are left out. The launcher gets the container's
args and that environment and returns the command line and environment to run: it maps the
cluster's addresses to the test's (its etcd, ports 0).

    kubelet = Kubelet(api, {"pod": launch_pod}, log_dir=tmp_path)
    kubelet.start()
    ...
    kubelet.close()     # every process stopped

Failure modes: a launcher that raises marks the pod ``Failed`` (logged) and is retried at the
next look; ``close()`` stops every process, SIGKILL after 10 s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tests.kube.apiserver import FakeKubeAPI
from tests.kube.errors import KubeError

_log = logging.getLogger(__name__)

Obj = dict[str, Any]
# (container args, resolved env, pod name) -> (argv, env) to run
Launcher = Callable[[list[str], dict[str, str], str], tuple[list[str], dict[str, str]]]
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
_LETTERS = "bcdfghjklmnpqrstvwxz2456789"
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


@dataclass(eq=False)
class RunningPod:
    name: str
    namespace: str
    deployment: str
    started: float
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: list[IO[bytes]] = field(default_factory=list)
    restarts: int = 0

    @property
    def alive(self) -> bool:
        return bool(self.processes) and all(p.poll() is None for p in self.processes.values())


class Kubelet:
    def __init__(
        self,
        api: FakeKubeAPI,
        launchers: Mapping[str, Launcher],
        log_dir: Path,
        *,
        interval: float = 0.1,
    ) -> None:
        self.api = api
        self.launchers = dict(launchers)
        self.log_dir = log_dir
        self.interval = interval
        self._pods: dict[tuple[str, str], list[RunningPod]] = {}  # (ns, deployment) -> pods
        self._stopping: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started_total = 0
        self.stopped_total = 0

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Kubelet:
        self._thread = threading.Thread(target=self._run, name="fake-kubelet", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        with self._lock:
            pods = [p for group in self._pods.values() for p in group]
            self._pods.clear()
        for pod in pods:
            self._terminate(pod, grace=10.0)
        for thread in self._stopping:
            thread.join(15)

    def __enter__(self) -> Kubelet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- what a test looks at ------------------------------------------------------------------

    def pods(self, deployment: str, namespace: str = "default") -> list[str]:
        """Names of the pods running for a Deployment, oldest first."""
        with self._lock:
            return [p.name for p in self._pods.get((namespace, deployment), []) if p.alive]

    def log_text(self) -> str:
        """Every pod's output so far, for a failing test to show."""
        out = []
        for path in sorted(self.log_dir.glob("*.log")):
            out.append(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(out)

    # --- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._sync()
            except Exception:  # a test helper must not die quietly: log and go on
                _log.exception("fake kubelet: sync failed")

    def _sync(self) -> None:
        deployments = {
            ((d["metadata"].get("namespace") or "default"), d["metadata"]["name"]): d
            for d in self.api.objects("deployments")
        }
        with self._lock:
            keys = set(self._pods) | set(deployments)
        for key in sorted(keys):
            deployment = deployments.get(key)
            want = 0
            if deployment is not None and not deployment["metadata"].get("deletionTimestamp"):
                want = int((deployment.get("spec") or {}).get("replicas", 1) or 0)
            self._converge(key, deployment, want)

    def _converge(self, key: tuple[str, str], deployment: Obj | None, want: int) -> None:
        namespace, name = key
        with self._lock:
            pods = self._pods.setdefault(key, [])
        for pod in pods:
            for container, process in list(pod.processes.items()):
                if process.poll() is not None and deployment is not None:
                    _log.warning(
                        "fake kubelet: %s/%s exited %s; restarting",
                        pod.name, container, process.returncode,
                    )  # fmt: skip
                    pod.restarts += 1
                    self._launch_container(pod, deployment, container)
        while len(pods) < want and deployment is not None:
            pod = self._create_pod(deployment)
            with self._lock:
                pods.append(pod)
        if len(pods) > want:
            costs = {p.name: self._deletion_cost(p) for p in pods}
            # The lowest deletion cost first, then the newest.
            doomed = sorted(pods, key=lambda p: (costs[p.name], -p.started))[: len(pods) - want]
            with self._lock:
                for pod in doomed:
                    pods.remove(pod)
            for pod in doomed:
                thread = threading.Thread(
                    target=self._terminate,
                    args=(pod, _grace(deployment)),
                    name=f"fake-kubelet-stop-{pod.name}",
                    daemon=True,
                )
                thread.start()
                self._stopping.append(thread)
        if deployment is None:
            with self._lock:
                if not pods:
                    self._pods.pop(key, None)
            return
        self._write_status(namespace, name, deployment, pods)

    def _deletion_cost(self, pod: RunningPod) -> int:
        obj = self.api.get("pods", pod.namespace, pod.name) or {}
        value = ((obj.get("metadata") or {}).get("annotations") or {}).get(DELETION_COST, "0")
        try:
            return int(value)
        except ValueError:
            return 0

    def _create_pod(self, deployment: Obj) -> RunningPod:
        meta = deployment["metadata"]
        namespace = meta.get("namespace") or "default"
        template = (deployment.get("spec") or {}).get("template") or {}
        name = f"{meta['name']}-" + "".join(random.choice(_LETTERS) for _ in range(5))
        pod = RunningPod(name, namespace, meta["name"], time.monotonic())
        self.api.create(
            "pods",
            {
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "labels": dict((template.get("metadata") or {}).get("labels") or {}),
                    "ownerReferences": [
                        {"apiVersion": "apps/v1", "kind": "Deployment", "name": meta["name"],
                         "uid": meta.get("uid", ""), "controller": True}
                    ],
                },
                "spec": template.get("spec") or {},
            },
        )  # fmt: skip
        for container in (template.get("spec") or {}).get("containers") or []:
            if container.get("name") in self.launchers:
                self._launch_container(pod, deployment, container["name"])
        self.started_total += 1
        self._set_phase(pod, "Running" if pod.alive else "Failed")
        return pod

    def _launch_container(self, pod: RunningPod, deployment: Obj, container_name: str) -> None:
        template = (deployment.get("spec") or {}).get("template") or {}
        container = next(
            c
            for c in (template.get("spec") or {}).get("containers") or []
            if c.get("name") == container_name
        )
        env = _resolve_env(container.get("env") or [], pod)
        try:
            argv, run_env = self.launchers[container_name](
                list(container.get("args") or []), env, pod.name
            )
        except Exception:
            _log.exception("fake kubelet: cannot launch %s/%s", pod.name, container_name)
            return
        log = open(self.log_dir / f"{pod.name}-{container_name}.log", "ab")  # noqa: SIM115
        pod.logs.append(log)
        pod.processes[container_name] = subprocess.Popen(
            argv, env={**os.environ, **run_env}, stdout=log, stderr=subprocess.STDOUT
        )

    def _terminate(self, pod: RunningPod, grace: float) -> None:
        for process in pod.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in pod.processes.values():
            try:
                process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        for log in pod.logs:
            log.close()
        with contextlib.suppress(KubeError):
            self.api.delete("pods", pod.namespace, pod.name)
        self.stopped_total += 1

    def _set_phase(self, pod: RunningPod, phase: str) -> None:
        with contextlib.suppress(KubeError):
            self.api.patch(
                "pods", pod.namespace, pod.name,
                {"status": {"phase": phase, "podIP": "127.0.0.1", "containerStatuses": [
                    {"name": c, "ready": pod.alive, "restartCount": pod.restarts}
                    for c in pod.processes
                ]}},
                subresource="status",
            )  # fmt: skip

    def _write_status(
        self, namespace: str, name: str, deployment: Obj, pods: list[RunningPod]
    ) -> None:
        ready = sum(1 for p in pods if p.alive)
        status = {
            "observedGeneration": deployment["metadata"].get("generation", 1),
            "replicas": len(pods),
            "updatedReplicas": len(pods),
            "readyReplicas": ready,
            "availableReplicas": ready,
        }
        current = deployment.get("status") or {}
        if all(current.get(k) == v for k, v in status.items()):
            return
        with contextlib.suppress(KubeError):  # deleted meanwhile: the next look sees it
            self.api.patch("deployments", namespace, name, {"status": status}, subresource="status")


def _grace(deployment: Obj | None) -> float:
    spec = (((deployment or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
    return float(spec.get("terminationGracePeriodSeconds", 30))


def _resolve_env(env: list[Obj], pod: RunningPod) -> dict[str, str]:
    fields = {
        "metadata.name": pod.name,
        "metadata.namespace": pod.namespace,
        "status.podIP": "127.0.0.1",
    }
    out: dict[str, str] = {}
    for item in env:
        name = item.get("name")
        if not name:
            continue
        if "value" in item:
            out[name] = _VAR.sub(lambda m: out.get(m.group(1), m.group(0)), str(item["value"]))
        elif (ref := (item.get("valueFrom") or {}).get("fieldRef") or {}).get(
            "fieldPath"
        ) in fields:
            out[name] = fields[ref["fieldPath"]]
    return out
