"""`mesh up`: a whole mesh on one machine, as child processes, stopped together on Ctrl-C.

    mesh up --storage ./models --pods 3 --capacity 1Gi

starts etcd (the `etcd` binary from PATH, data in a temporary directory unless --data-dir),
one router on --port (8033, gRPC) and --rest-port (8008, v2 REST) and N pods, each with
its puller, whose storage is --storage (a `file` store: `--storage-path fraud/v3` names
./models/fraud/v3). Register models with `mesh register` against the router; they load on
their first request.
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
from pathlib import Path
from typing import Any

import grpc
from pydantic import Field, ValidationError

from mesh.errors import MeshError
from mesh.lifecycle import check_port_free
from mesh.settings import CommandSettings, add_flags
from mesh.units import parse_bytes


class UpSettings(CommandSettings, env_prefix="MESH_UP_"):
    """Every knob of `mesh up`."""

    storage: Path = Field(description="directory of model files (a `file` store)")
    pods: int = Field(2, ge=0, description="serving pods")
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


def add_parser(sub: Any) -> None:
    p = sub.add_parser("up", help="run a local mesh: etcd, a router and pods",
                       description=__doc__.splitlines()[0])  # fmt: skip
    add_flags(p, UpSettings)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"mesh up: {what} exited with status {proc.returncode}")
        try:
            grpc.channel_ready_future(grpc.insecure_channel(f"127.0.0.1:{port}")).result(0.5)
            return
        except grpc.FutureTimeoutError:
            continue
    raise SystemExit(f"mesh up: {what} did not start within {timeout:.0f}s")


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


def _stop(children: list[tuple[str, subprocess.Popen[bytes]]], timeout: float = 30) -> None:
    """Stop in stages, front to back: router, pods, pullers, then etcd last, so that nobody
    loses its store while it is still revoking leases (the Ctrl-C warnings of old)."""
    stages = ("router", "pod-", "puller-", "etcd")
    with contextlib.suppress(ValueError):  # not the main thread: nothing to ignore
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C would orphan children
    for stage in stages:
        group = [c for name, c in children if name.startswith(stage) and c.poll() is None]
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


@contextlib.contextmanager
def local_mesh(args: UpSettings | argparse.Namespace) -> Iterator[dict[str, Any]]:
    etcd = shutil.which("etcd")
    if etcd is None:
        raise SystemExit("mesh up: no etcd on PATH (Debian: apt-get install etcd-server)")
    if not args.storage.is_dir():
        raise SystemExit(f"mesh up: --storage {args.storage}: no such directory")
    host = args.host
    if args.port == 0:
        args.port = free_port()
    # The fixed ports first, before anything starts: a clash is one line naming the port, and
    # never a mesh that reports another mesh's router as its own.
    # A caller without a REST port in mind (the demo) gets a free one.
    rest_port = getattr(args, "rest_port", None) or free_port()
    try:
        check_port_free(host, args.port, "the router's gRPC port; --port")
        check_port_free(host, rest_port, "the router's REST port; --rest-port")
    except MeshError as exc:
        raise SystemExit(f"mesh up: {exc}") from None
    die = die_with_parent()
    mesh = [*die, sys.executable, "-m", "mesh"]
    # Each child in a session of its own: Ctrl-C reaches `mesh up` alone, which stops them in
    # order (a terminal's SIGINT to the whole group stopped etcd under the pods).
    spawn: dict[str, Any] = {"start_new_session": True}
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    cache = cache_bytes(args.capacity)
    with tempfile.TemporaryDirectory(prefix="mesh-up-") as tmp:
        data = args.data_dir or Path(tmp) / "etcd"
        client, peer = free_port(), free_port()
        url = f"http://127.0.0.1:{client}"
        try:
            proc = subprocess.Popen(
                [*die, etcd, "--data-dir", str(data), "--listen-client-urls", url,
                 "--advertise-client-urls", url,
                 "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-cluster", f"default=http://127.0.0.1:{peer}", "--log-level", "error"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **spawn,
            )  # fmt: skip
            children.append(("etcd", proc))
            wait_port(client, proc, "etcd")
            # Every pod gets its puller, reading the storage directory as a `file` store.
            storage_config = Path(tmp) / "storage-config.json"
            entry = {"type": "file", "root": str(args.storage.resolve())}
            storage_config.write_text(json.dumps({"default": entry}))
            pods = []
            pullers = {}
            for i in range(args.pods):
                socket_path = f"unix:{tmp}/puller-{i}.sock"
                proc = subprocess.Popen(
                    [*mesh, "puller", "--listen", socket_path, "--no-metrics",
                     "--cache-dir", f"{tmp}/cache-{i}", "--cache-bytes", str(cache),
                     "--storage-config", str(storage_config), "--log-level", "WARNING"],
                    **spawn,
                )  # fmt: skip
                children.append((f"puller-{i}", proc))
                pullers[f"puller-{i}"] = socket_path
                port, metrics = free_port(), free_port()
                proc = subprocess.Popen(
                    [*mesh, "pod", "--etcd", url, "--etcd-prefix", args.prefix,
                     "--pod-id", f"pod-{i}", "--host", host, "--port", str(port),
                     "--metrics-port", str(metrics), "--capacity", args.capacity,
                     "--puller", socket_path,
                     # The whole local mesh stops at once: nowhere to hand models off to.
                     "--handoff-timeout", "0"],
                    **spawn,
                )  # fmt: skip
                children.append((f"pod-{i}", proc))
                pods.append((f"pod-{i}", port, metrics, proc))
            for name, port, _, proc in pods:
                wait_port(port, proc, name)
            router_metrics = free_port()
            proc = subprocess.Popen(
                [*mesh, "router", "--etcd", url, "--etcd-prefix", args.prefix,
                 "--host", host, "--port", str(args.port), "--rest-port", str(rest_port),
                 "--metrics-port", str(router_metrics)],
                **spawn,
            )  # fmt: skip
            children.append(("router", proc))
            wait_port(args.port, proc, "router")
            wait_tcp(rest_port, proc, "the router's REST port")
            yield {
                "etcd": url,
                "etcd_peer": f"http://127.0.0.1:{peer}",
                "router": f"{host}:{args.port}",
                "router_metrics": f"{host}:{router_metrics}",
                "pods": {name: f"{host}:{port}" for name, port, _, _ in pods},
                "pod_metrics": {name: f"{host}:{metrics}" for name, _, metrics, _ in pods},
                "pullers": pullers,
                "puller_cache_bytes": cache,
                "rest": f"{host}:{rest_port}",
                "children": children,
            }
        finally:
            _stop(children)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def describe(mesh: dict[str, Any]) -> str:
    """Every address the local mesh opened, one line each."""
    lines = [
        f"  router     gRPC {mesh['router']}   metrics http://{mesh['router_metrics']}/metrics",
        f"  router     REST http://{mesh['rest']}   capacity page http://{mesh['rest']}/dashboard",
    ]
    for name, address in mesh["pods"].items():
        lines.append(
            f"  {name:<10} gRPC {address}   metrics http://{mesh['pod_metrics'][name]}/metrics"
        )
    cache = mesh["puller_cache_bytes"] / 2**30
    for name, address in mesh["pullers"].items():
        lines.append(f"  {name:<10} {address}   cache {cache:.1f}Gi")
    lines.append(f"  etcd       {mesh['etcd']}   peer {mesh['etcd_peer']}")
    return "\n".join(lines)


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
    try:
        with local_mesh(settings) as mesh:
            print("mesh up: listening on", describe(mesh), sep="\n")
            print(
                f"Register models with `mesh register --router {mesh['router']}`; "
                "`mesh status` shows the mesh; press Ctrl-C to stop everything.",
                flush=True,
            )
            try:
                while all(child.poll() is None for _, child in mesh["children"]):
                    time.sleep(0.5)
            except KeyboardInterrupt:
                print("\nmesh up: stopping", flush=True)
                return 0
            dead = [name for name, child in mesh["children"] if child.poll() is not None]
            print(f"mesh up: {', '.join(dead)} exited; stopping", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        print("\nmesh up: stopped while starting", file=sys.stderr)
        return 130
