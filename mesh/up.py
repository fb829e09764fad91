"""`mesh up`: a whole mesh on one machine, as child processes, stopped together on Ctrl-C.

    mesh up --storage ./models --pods 3 --capacity 1Gi

starts etcd (the `etcd` binary from PATH, data in a temporary directory unless --data-dir),
one router on --port (8033, gRPC) and --rest-port (8008, v2 REST) and N pods, each with
its puller, whose storage is --storage (a `file` store: `--storage-path fraud/v3` names
./models/fraud/v3). Register models with `mesh register` against the router; they load on
their first request.

    mesh up --storage ./models --min-pods 0 --max-pods 3 --scale-down-after 30

runs an elastic pool instead (mesh.pool): a controller sizes it with the pool-size policy
(mesh.placement.pool) from the mesh's own signals, starting pods as they are needed (a request
for a pool with none is held by the router while one starts) and draining them one at a time
when idle, down to --min-pods (0: none). A pod that recycles (exit status 75) is replaced.

    mesh up --storage ./models --host 0.0.0.0 --internal-tls

serves the pods' ports (gRPC with the control API, and the data port) over mutual TLS with a
CA made for this run by openssl (LocalTLS): only the router, with its certificate, gets an
answer from them. Without the flag they are plaintext, the default for local development.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import grpc
from pydantic import Field, ValidationError

from mesh import logs
from mesh.errors import MeshError
from mesh.lifecycle import check_port_free, free_port
from mesh.pool.local import EXIT_RECYCLE, LocalPod, LocalPods, LocalPodSpec
from mesh.pool.run import RunningPool, start_pool
from mesh.pool.settings import PoolSettings
from mesh.settings import CommandSettings, Nested, add_flags
from mesh.units import parse_bytes


class UpSettings(CommandSettings, env_prefix="MESH_UP_"):
    """Every knob of `mesh up`."""

    storage: Path = Field(description="directory of model files (a `file` store)")
    pods: int | None = Field(
        None, ge=0, description="serving pods (unset: 2; with a pool, those it starts with: "
        "--min-pods)",
    )  # fmt: skip
    capacity: str = Field(
        "1Gi", description="model bytes per pod; each puller's disk cache is twice it"
    )
    port: int = Field(8033, ge=0, le=65535, description="the router's gRPC port (0: a free one)")
    rest_port: int = Field(
        8008,
        ge=0,
        le=65535,
        description="the router's v2 REST port, with the capacity page at /dashboard "
        "(0: a free one)",
    )
    host: str = Field("127.0.0.1", description="address the router and the pods listen on")
    data_dir: Path | None = Field(None, description="etcd's data (unset: a temporary directory)")
    prefix: str = Field("/mesh/", description="root key prefix in etcd")
    internal_tls: bool = Field(
        False,
        description="mutual TLS between the router and the pods (their gRPC and data ports), "
        "with a CA made for this run by openssl from PATH; its keys live in the run's "
        "temporary directory and go with it",
    )
    pool: Annotated[PoolSettings, Nested(prefix="", section="elastic pool")] = PoolSettings()


def add_parser(sub: Any) -> None:
    p = sub.add_parser("up", help="run a local mesh: etcd, a router and pods",
                       description=__doc__.splitlines()[0])  # fmt: skip
    add_flags(p, UpSettings)


def wait_port(
    port: int,
    proc: subprocess.Popen[bytes],
    what: str,
    timeout: float = 60,
    tls: LocalTLS | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    target = f"127.0.0.1:{port}"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"mesh up: {what} exited with status {proc.returncode}")
        channel = grpc.insecure_channel(target) if tls is None else tls.channel(target)
        try:
            grpc.channel_ready_future(channel).result(0.5)
            return
        except grpc.FutureTimeoutError:
            continue
        finally:
            channel.close()
    raise SystemExit(f"mesh up: {what} did not start within {timeout:.0f}s")


# The name in the pods' certificate that the router checks, whatever address it dials.
TLS_SERVER_NAME = "localhost"


@dataclass(frozen=True)
class LocalTLS:
    """`--internal-tls`: a CA made for this run, a certificate for every pod (they share it)
    and one for the router, as PEM files in `directory`."""

    directory: Path

    @classmethod
    def make(cls, directory: Path) -> LocalTLS:
        """Make the CA and both certificates with openssl (P-256 keys, valid for 30 days).
        SystemExit with one line when openssl is missing or fails."""
        openssl = shutil.which("openssl")
        if openssl is None:
            raise SystemExit("mesh up: --internal-tls needs openssl on PATH")
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        days = ["-days", "30"]
        (directory / "pod.ext").write_text(f"subjectAltName=DNS:{TLS_SERVER_NAME},IP:127.0.0.1\n")
        steps = [
            ["req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", *days,
             "-subj", "/CN=mesh up CA"],
            *(step for name in ("pod", "router") for step in (
                ["req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN=mesh-{name}"],
                ["x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", *days,
                 *(["-extfile", "pod.ext"] if name == "pod" else [])],
            )),
        ]  # fmt: skip
        for step in steps:
            done = subprocess.run(
                [openssl, *step], cwd=directory, capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                why = (done.stderr.strip().splitlines() or ["no message"])[-1]
                raise SystemExit(f"mesh up: --internal-tls: openssl {step[0]} failed: {why}")
        return cls(directory)

    def pod_args(self) -> tuple[str, ...]:
        d = self.directory
        return ("--tls-cert", str(d / "pod.crt"), "--tls-key", str(d / "pod.key"),
                "--tls-ca", str(d / "ca.crt"))  # fmt: skip

    def router_args(self) -> list[str]:
        d = self.directory
        return ["--pod-tls-ca", str(d / "ca.crt"), "--pod-tls-cert", str(d / "router.crt"),
                "--pod-tls-key", str(d / "router.key"),
                "--pod-tls-server-name", TLS_SERVER_NAME]  # fmt: skip

    def channel(self, target: str) -> grpc.Channel:
        """A channel to a pod with the router's certificate (mesh up's own checks)."""
        d = self.directory
        credentials = grpc.ssl_channel_credentials(
            (d / "ca.crt").read_bytes(), (d / "router.key").read_bytes(),
            (d / "router.crt").read_bytes(),
        )  # fmt: skip
        options = [("grpc.ssl_target_name_override", TLS_SERVER_NAME)]
        return grpc.secure_channel(target, credentials, options=options)


def die_with_parent() -> list[str]:
    """A prefix for each child's command line: SIGTERM when `mesh up` dies, even by SIGKILL
    (Linux's PR_SET_PDEATHSIG, set by util-linux's `setpriv` and kept across its exec), so no
    etcd, router, pod or puller outlives it. Empty where setpriv is missing."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


def cache_bytes(capacity: str) -> int:
    """The puller's disk cache for a pod of `capacity`: twice it (files being pulled beside the
    models held), and never under 1Gi."""
    try:
        size = parse_bytes(capacity)
    except ValueError as exc:
        raise SystemExit(f"mesh up: --capacity: {exc}") from None
    assert isinstance(size, int)
    return max(2 * size, 2**30)


def _stop(children: list[Child], timeout: float = 30) -> None:
    """Stop in stages, front to back: router, pods, pullers, then etcd last, so that nobody
    loses its store while it is still revoking leases (the Ctrl-C warnings of old)."""
    stages = (RouterProcess, PodProcess, PullerProcess, EtcdProcess)
    with contextlib.suppress(ValueError):  # not the main thread: nothing to ignore
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C would orphan children
    for stage in stages:
        group = [c.process for c in children if isinstance(c, stage) and c.process.poll() is None]
        for child in group:
            child.send_signal(signal.SIGTERM)
        for child in group:
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def wait_tcp(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"mesh up: {what} exited with status {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"mesh up: {what} did not open within {timeout:.0f}s")


@dataclass(frozen=True)
class Child:
    """One process of a local mesh: its name and the process itself."""

    name: str
    process: subprocess.Popen[bytes] = field(repr=False, compare=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None


@dataclass(frozen=True)
class EtcdProcess(Child):
    url: str  # the client URL (`--etcd`)
    peer_url: str


@dataclass(frozen=True)
class PullerProcess(Child):
    address: str  # unix:/path, as the pod's --puller
    cache_bytes: int


@dataclass(frozen=True)
class PodProcess(Child):
    address: str  # host:port of its gRPC API
    metrics: str  # host:port of its /metrics
    puller: PullerProcess


@dataclass(frozen=True)
class RouterProcess(Child):
    address: str  # host:port of the gRPC API (v2 and management)
    rest: str  # host:port of the v2 REST API and the capacity page
    metrics: str


@dataclass
class LocalMesh:
    """What `mesh up` started: every process with its addresses, metrics ports and pid.

    with local_mesh(UpSettings(storage=Path("models"), port=0, rest_port=0)) as mesh:
        grpc.insecure_channel(mesh.router.address)
    """

    etcd: EtcdProcess
    router: RouterProcess
    local: LocalPods = field(repr=False)
    # The elastic pool's settings and its running controller; None: a fixed set of pods.
    pool: PoolSettings | None = None
    controller: RunningPool | None = None
    # --internal-tls: the run's CA and certificates; None: the pods' ports are plaintext.
    tls: LocalTLS | None = None
    _views: dict[str, PodProcess] = field(default_factory=dict, repr=False)

    @property
    def pods(self) -> list[PodProcess]:
        """The pods running now (a pool's come and go as it scales)."""
        return _pod_views(self.local, self._views)

    @property
    def pullers(self) -> list[PullerProcess]:
        return [pod.puller for pod in self.pods]

    def children(self) -> list[Child]:
        """Every process, in the order they started."""
        return [self.etcd, *self.pullers, *self.pods, self.router]

    def exited(self) -> list[str]:
        """The names of the processes that are no longer running."""
        return [child.name for child in self.children() if not child.running()]

    def describe(self) -> str:
        """Every address the local mesh opened, one line each."""
        r = self.router
        lines = [
            f"  router     gRPC {r.address}   metrics http://{r.metrics}/metrics   pid {r.pid}",
            f"  router     REST http://{r.rest}   capacity page http://{r.rest}/dashboard",
        ]
        grpc_of_pods = "gRPC+mTLS" if self.tls is not None else "gRPC"
        for pod in self.pods:
            lines.append(
                f"  {pod.name:<10} {grpc_of_pods} {pod.address}   "
                f"metrics http://{pod.metrics}/metrics   pid {pod.pid}"
            )
        for puller in self.pullers:
            cache = puller.cache_bytes / 2**30
            lines.append(
                f"  {puller.name:<10} {puller.address}   cache {cache:.1f}Gi   pid {puller.pid}"
            )
        e = self.etcd
        lines.append(f"  etcd       {e.url}   peer {e.peer_url}   pid {e.pid}")
        if self.pool is not None and self.controller is not None:
            host = self.router.address.rpartition(":")[0]
            lines.append(
                f"  pool       {self.pool.low} to {self.pool.high} pods, one drained after "
                f"{self.pool.idle:g}s of less need   "
                f"metrics http://{host}:{self.controller.metrics_port}/metrics"
            )
        return "\n".join(lines)


def _pod_views(local: LocalPods, views: dict[str, PodProcess]) -> list[PodProcess]:
    """Each local pod as a PodProcess (the same object for a pod as long as it runs)."""
    found = []
    for pod in local.pods():
        view = views.get(pod.pod_id)
        if view is None or view.process is not pod.pod:
            view = views[pod.pod_id] = _pod_view(pod, local.spec)
        found.append(view)
    for pod_id in set(views) - {p.name for p in found}:
        del views[pod_id]
    return found


def _pod_view(pod: LocalPod, spec: LocalPodSpec) -> PodProcess:
    n = pod.pod_id.removeprefix("pod-")
    puller = PullerProcess(f"puller-{n}", pod.puller, pod.puller_socket, spec.cache_bytes)
    return PodProcess(
        pod.pod_id, pod.pod, f"{spec.host}:{pod.port}", f"{spec.host}:{pod.metrics_port}", puller
    )


@contextlib.contextmanager
def local_mesh(settings: UpSettings) -> Iterator[LocalMesh]:
    """Start etcd, a puller and a pod per --pods, and the router; stop them all on exit.

    Raises SystemExit with one line when something is missing or in use, or a child exits
    while starting."""
    etcd = shutil.which("etcd")
    if etcd is None:
        raise SystemExit("mesh up: no etcd on PATH (Debian: apt-get install etcd-server)")
    if not settings.storage.is_dir():
        raise SystemExit(f"mesh up: --storage {settings.storage}: no such directory")
    host = settings.host
    # Port 0: a free one. The fixed ports are checked before anything starts: a clash is one
    # line naming the port, and never a mesh that reports another mesh's router as its own.
    router_port = settings.port or free_port()
    rest_port = settings.rest_port or free_port()
    try:
        check_port_free(host, router_port, "the router's gRPC port; --port")
        check_port_free(host, rest_port, "the router's REST port; --rest-port")
    except MeshError as exc:
        raise SystemExit(f"mesh up: {exc}") from None
    die = die_with_parent()
    mesh = [*die, sys.executable, "-m", "mesh"]
    # Each child in a session of its own: Ctrl-C reaches `mesh up` alone, which stops them in
    # order (a terminal's SIGINT to the whole group stopped etcd under the pods).
    spawn: dict[str, Any] = {"start_new_session": True}
    started: list[Child] = []
    local: LocalPods | None = None
    controller: RunningPool | None = None
    cache = cache_bytes(settings.capacity)
    with tempfile.TemporaryDirectory(prefix="mesh-up-") as tmp:
        data = settings.data_dir or Path(tmp) / "etcd"
        client, peer = free_port(), free_port()
        url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        try:
            proc = subprocess.Popen(
                [*die, etcd, "--data-dir", str(data), "--listen-client-urls", url,
                 "--advertise-client-urls", url,
                 "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                 "--initial-cluster", f"default={peer_url}", "--log-level", "error"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **spawn,
            )  # fmt: skip
            etcd_child = EtcdProcess("etcd", proc, url, peer_url)
            started.append(etcd_child)
            wait_port(client, proc, "etcd")
            # Every pod gets its puller, reading the storage directory as a `file` store.
            storage_config = Path(tmp) / "storage-config.json"
            entry = {"type": "file", "root": str(settings.storage.resolve())}
            storage_config.write_text(json.dumps({"default": entry}))
            pool = settings.pool if settings.pool.enabled else None
            tls = LocalTLS.make(Path(tmp) / "tls") if settings.internal_tls else None
            spec = LocalPodSpec(
                mesh=mesh, etcd=url, prefix=settings.prefix, host=host,
                capacity=settings.capacity, cache_bytes=cache, storage_config=storage_config,
                workdir=Path(tmp),
                # A fixed set of pods stops all at once: nowhere to hand models off to. A pool
                # drains one pod at a time, onto the pods that stay.
                handoff_timeout=pool.pool_handoff_timeout if pool is not None else 0.0,
                spawn=spawn, pod_args=tls.pod_args() if tls is not None else (),
            )  # fmt: skip
            local = LocalPods(spec)
            if pool is None:
                initial = 2 if settings.pods is None else settings.pods
            else:
                initial = pool.low if settings.pods is None else settings.pods
                initial = min(max(initial, pool.low), pool.high)
            for _ in range(initial):
                local.start_pod()
            for pod in local.pods():
                wait_port(pod.port, pod.pod, pod.pod_id, tls=tls)
            router_metrics = free_port()
            proc = subprocess.Popen(
                [*mesh, "router", "--etcd", url, "--etcd-prefix", settings.prefix,
                 "--host", host, "--port", str(router_port), "--rest-port", str(rest_port),
                 "--metrics-port", str(router_metrics),
                 *(tls.router_args() if tls is not None else [])],
                **spawn,
            )  # fmt: skip
            router = RouterProcess(
                "router", proc, f"{host}:{router_port}", f"{host}:{rest_port}",
                f"{host}:{router_metrics}",
            )  # fmt: skip
            started.append(router)
            wait_port(router_port, proc, "router")
            wait_tcp(rest_port, proc, "the router's REST port")
            if pool is not None:
                capacity = parse_bytes(settings.capacity)
                assert isinstance(capacity, int)
                controller = start_pool(pool, local, url, settings.prefix, host, capacity)
            yield LocalMesh(etcd_child, router, local, pool, controller, tls=tls)
        finally:
            # The controller first (it must start no pod while the rest stop), then everything.
            if controller is not None:
                controller.stop()
            if local is not None:
                local.close()
                for view in _pod_views(local, {}):
                    started += [view, view.puller]
            _stop(started)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _watch(mesh: LocalMesh) -> list[str]:
    """Run until a process the mesh cannot do without exits; the names of those that did.

    A pool's controller replaces its pods itself. Without one, a pod that recycles itself
    (exit status 75: a runtime kept device memory) is replaced by a fresh pod; any other
    exit stops the mesh, as a fixed set of pods promised."""
    while True:
        dead = [c.name for c in (mesh.etcd, mesh.router) if not c.running()]
        if dead:
            return dead
        if mesh.controller is None:
            for gone in mesh.local.reap():
                if gone.returncode != EXIT_RECYCLE:
                    return [gone.pod_id]
                replacement = mesh.local.start_pod()
                print(
                    f"mesh up: {gone.pod_id} recycled itself (status {EXIT_RECYCLE}); "
                    f"{replacement} replaces it",
                    file=sys.stderr,
                    flush=True,
                )
        time.sleep(0.5)


def run(args: argparse.Namespace) -> int:
    try:
        settings = UpSettings.from_args(args)
    except (ValidationError, ValueError) as exc:
        print(f"mesh up: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    # Ctrl-C (or SIGTERM), even while starting, stops what was started, quietly. Installed
    # explicitly: a shell's background job inherits SIGINT ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    logs.configure("INFO")  # the pool controller's decisions, beside the children's logs
    try:
        with local_mesh(settings) as mesh:
            print("mesh up: listening on", mesh.describe(), sep="\n")
            print(
                f"Register models with `mesh register --router {mesh.router.address}`; "
                "`mesh status` shows the mesh; press Ctrl-C to stop everything.",
                flush=True,
            )
            try:
                dead = _watch(mesh)
            except KeyboardInterrupt:
                print("\nmesh up: stopping", flush=True)
                return 0
            print(f"mesh up: {', '.join(dead)} exited; stopping", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        print("\nmesh up: stopped while starting", file=sys.stderr)
        return 130
