"""The `mesh` command line: one subcommand per process.

    mesh pod --models ./models --port 8085

Flags override MESH_<COMPONENT>_* environment variables, which override defaults; the settings
are validated before anything starts, and a bad value exits with status 2 and a clear message.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mesh import __version__, logs
from mesh.errors import MeshError


def _pod_parser(sub: Any) -> None:
    p = sub.add_parser("pod", help="run a serving pod", description="Run a serving pod.")
    p.add_argument("--models", type=Path, help="serve every model under DIR by name")
    p.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, help="gRPC port (default 8085; 0 picks a free one)")
    p.add_argument("--rest-port", type=int, help="serve v2 REST on this port too (default: none)")
    p.add_argument("--metrics-port", type=int, help="Prometheus port (default 2112)")
    p.add_argument("--no-metrics", action="store_true", help="serve no /metrics endpoint")
    p.add_argument(
        "--capacity",
        help="bytes of models to hold, e.g. 4Gi (default: from the "
        "container's memory limit, or the GPU's memory, less --reserve)",
    )
    p.add_argument("--reserve", help="memory kept back from the default capacity (512Mi)")
    p.add_argument(
        "--host-tier",
        help="bytes of host memory for models evicted from the device, e.g. 8Gi: they come "
        "back on their next request without the disk or the puller (default 0: none)",
    )
    p.add_argument(
        "--unload-leak-bound",
        help="device bytes a runtime may keep after its unloads before the pod recycles "
        "(drains and exits with status 75 to be replaced; default 256Mi)",
    )
    p.add_argument(
        "--unload-settle",
        type=float,
        help="seconds an unload's device memory may take to come back (default 2)",
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where models run")
    p.add_argument("--device-index", type=int, help="GPU index (default 0)")
    p.add_argument("--workers", type=int, help="inference threads (default 4)")
    p.add_argument("--load-concurrency", type=int, help="loads at once (default 2)")
    p.add_argument("--load-timeout", type=float, help="seconds a load may take (default 300)")
    p.add_argument(
        "--min-model-age",
        type=float,
        help="never evict a model used within this many seconds (default 0)",
    )
    p.add_argument(
        "--failure-ttl", type=float, help="seconds a failed load is remembered (default 60)"
    )
    p.add_argument("--max-message-bytes", help="largest request or response (default 64Mi)")
    p.add_argument(
        "--drain-timeout",
        type=float,
        help="seconds SIGTERM waits for requests in flight (default 30)",
    )
    p.add_argument(
        "--handoff-timeout",
        type=float,
        help="seconds SIGTERM waits for this pod's models to load on others (default 45)",
    )
    p.add_argument(
        "--per-model-metrics",
        action="store_true",
        default=None,
        help="label the inference totals by every model (high cardinality)",
    )
    p.add_argument(
        "--metrics-top-models",
        type=int,
        help="per-model series for the K busiest models, the rest as model=other "
        "(default 10; 0: none)",
    )
    p.add_argument(
        "--metrics-top-interval",
        type=float,
        help="seconds between choices of the busiest models (default 60)",
    )
    p.add_argument("--runtimes", help="comma-separated runtimes to enable (default: all installed)")
    g = p.add_argument_group("cluster membership")
    g.add_argument(
        "--etcd",
        help="etcd endpoints, e.g. http://etcd-0:2379,http://etcd-1:2379 "
        "(MESH_POD_ETCD); without it the pod runs standalone",
    )
    g.add_argument("--etcd-prefix", help="root key prefix of this mesh (default /mesh/)")
    g.add_argument("--etcd-ca", type=Path, help="CA certificate for etcd's TLS")
    g.add_argument("--etcd-cert", type=Path, help="client certificate for etcd")
    g.add_argument("--etcd-key", type=Path, help="client key for etcd")
    g.add_argument("--pod-id", help="this pod's name in the mesh (default: host name-pid)")
    g.add_argument("--advertise", help="host:port routers use to reach this pod")
    g.add_argument("--lease-ttl", type=int, help="seconds a dead pod stays visible (default 10)")
    g.add_argument(
        "--label",
        action="append",
        metavar="KEY=VALUE",
        help="a label placement can require (repeatable)",
    )
    g.add_argument(
        "--storage-dir",
        type=Path,
        help="local directory that LoadModel storage paths point into, for a pod without a puller",
    )
    g.add_argument("--puller", help="the puller sidecar's address (host:port or unix:/path)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING (default INFO)")
    p.add_argument("--log-json", action="store_true", default=None, help="log JSON lines")


def _run_pod(args: argparse.Namespace) -> int:
    from mesh.pod.server import serve
    from mesh.pod.settings import PodSettings

    overrides: dict[str, Any] = {
        k: v
        for k, v in vars(args).items()
        if v is not None and k not in ("command", "no_metrics", "runtimes", "label")
    }
    if args.label:
        try:
            overrides["labels"] = dict(item.split("=", 1) for item in args.label)
        except ValueError:
            print(f"mesh pod: --label takes KEY=VALUE, got {args.label}", file=sys.stderr)
            return 2
    if args.runtimes:
        overrides["runtimes"] = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    if args.no_metrics:
        overrides["metrics_port"] = None
    try:
        settings = PodSettings(**overrides)
    except ValidationError as exc:
        print(f"mesh pod: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_json)
    try:
        return asyncio.run(serve(settings)) or 0  # 75 (EXIT_RECYCLE): replace me
    except MeshError as exc:
        print(f"mesh pod: {exc}", file=sys.stderr)
        return 2


def _puller_parser(sub: Any) -> None:
    p = sub.add_parser(
        "puller",
        help="run a pod's puller sidecar",
        description="Fetch model artifacts from object storage into a bounded disk cache.",
    )
    p.add_argument("--listen", help="port on loopback, host:port, or unix:/path (default 8086)")
    p.add_argument("--metrics-port", type=int, help="Prometheus port (default 2113)")
    p.add_argument("--metrics-host", help="address of the metrics endpoint (default 0.0.0.0)")
    p.add_argument("--no-metrics", action="store_true", help="serve no /metrics endpoint")
    p.add_argument(
        "--cache-dir", type=Path, help="the disk cache, shared with the pod (default /models/cache)"
    )
    p.add_argument("--cache-bytes", help="the cache's budget, e.g. 20Gi (default 10Gi)")
    p.add_argument(
        "--storage-config",
        type=Path,
        help="the storage-config Secret's mount (a directory) or a JSON file "
        "(default /storage-config)",
    )
    p.add_argument("--pvc-root", type=Path, help="where pvc claims are mounted (/pvc_mounts)")
    p.add_argument("--concurrency", type=int, help="storage requests in flight (default 16)")
    p.add_argument("--range-size", help="fetch larger objects in ranges of this size (16Mi)")
    p.add_argument("--retries", type=int, help="attempts after a failure (default 5)")
    p.add_argument("--retry-initial", type=float, help="first backoff in seconds (default 0.2)")
    p.add_argument("--retry-max", type=float, help="longest backoff in seconds (default 5)")
    p.add_argument("--connect-timeout", type=float, help="seconds to connect (default 5)")
    p.add_argument("--request-timeout", type=float, help="seconds per request (default 300)")
    p.add_argument("--stall-timeout", type=float, help="seconds without a byte (default 30)")
    p.add_argument(
        "--no-verify-checksums",
        dest="verify_checksums",
        action="store_false",
        default=None,
        help="do not check S3 ETags as MD5 digests",
    )
    p.add_argument("--archive-max-bytes", help="largest unpacked archive (default 16Gi)")
    p.add_argument("--archive-max-members", type=int, help="most archive members (100000)")
    p.add_argument(
        "--drain-timeout", type=float, help="seconds SIGTERM waits for pulls (default 10)"
    )
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING (default INFO)")
    p.add_argument("--log-json", action="store_true", default=None, help="log JSON lines")


def _run_puller(args: argparse.Namespace) -> int:
    from mesh.puller.server import serve
    from mesh.puller.settings import PullerSettings

    overrides: dict[str, Any] = {
        k: v for k, v in vars(args).items() if v is not None and k not in ("command", "no_metrics")
    }
    if args.no_metrics:
        overrides["metrics_port"] = None
    try:
        settings = PullerSettings(**overrides)
    except ValidationError as exc:
        print(f"mesh puller: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_json)
    try:
        asyncio.run(serve(settings))
    except MeshError as exc:
        print(f"mesh puller: {exc}", file=sys.stderr)
        return 2
    return 0


def _controller_parser(sub: Any) -> None:
    p = sub.add_parser(
        "controller",
        help="run the Kubernetes controller for Predictor resources",
        description="Register Predictor resources with the mesh and write their status back.",
    )
    p.add_argument("--router", help="the routers' management API (default mesh-router:8033)")
    p.add_argument("--router-token", help="bearer token of the management API")
    p.add_argument("--router-ca", type=Path, help="CA of the router's TLS certificate")
    p.add_argument("--namespace", help="namespace of the Predictors (default: the pod's own)")
    p.add_argument("--kubeconfig", type=Path, help="kubeconfig (default: in-cluster)")
    p.add_argument("--resync", type=float, help="seconds between full resyncs (default 60)")
    p.add_argument("--poll", type=float, help="seconds between looks at a loading model (2)")
    p.add_argument("--watch-timeout", type=int, help="seconds one watch stays open (300)")
    p.add_argument(
        "--no-leader-election",
        dest="leader_election",
        action="store_false",
        default=None,
        help="run without a Lease (a single replica)",
    )
    p.add_argument("--lease-name", help="the Lease replicas elect a leader on (mesh-controller)")
    p.add_argument("--lease-duration", type=float, help="seconds a Lease holds (default 15)")
    p.add_argument("--identity", help="this replica's name in the Lease (default: host name)")
    p.add_argument("--grpc-endpoint", help="written into each Predictor's status.grpcEndpoint")
    p.add_argument("--http-endpoint", help="written into each Predictor's status.httpEndpoint")
    p.add_argument("--metrics-port", type=int, help="Prometheus port (default 2112)")
    p.add_argument("--no-metrics", action="store_true", help="serve no /metrics endpoint")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING (default INFO)")
    p.add_argument("--log-json", action="store_true", default=None, help="log JSON lines")


def _run_controller(args: argparse.Namespace) -> int:
    from mesh.controller.server import run
    from mesh.controller.settings import ControllerSettings

    overrides = {
        k: v for k, v in vars(args).items() if v is not None and k not in ("command", "no_metrics")
    }
    if args.no_metrics:
        overrides["metrics_port"] = None
    try:
        settings = ControllerSettings(**overrides)
    except ValidationError as exc:
        print(f"mesh controller: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_json)
    try:
        run(settings)
    except MeshError as exc:
        print(f"mesh controller: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `mesh` command line: every subcommand and its flags."""
    parser = argparse.ArgumentParser(prog="mesh", description="A multi-model serving mesh.")
    parser.add_argument("--version", action="version", version=f"mesh {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _pod_parser(sub)
    _puller_parser(sub)
    from mesh import admin
    from mesh import up as local_mesh

    admin.add_router_parser(sub)
    admin.add_admin_parsers(sub)
    local_mesh.add_parser(sub)
    p = sub.add_parser(
        "serve",
        help="the whole mesh in one process (no etcd)",
        description="Router, one pod and the models under DIR in one process.",
    )
    p.add_argument("--models", type=Path, required=True, help="directory of models")
    p.add_argument("--port", type=int, default=8033, help="gRPC port (default 8033)")
    p.add_argument("--rest-port", type=int, default=8008, help="v2 REST port (default 8008)")
    p.add_argument("--no-rest", action="store_true", help="serve no REST port")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--capacity", help="bytes of models to hold, e.g. 4Gi")
    _controller_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from mesh import admin
    from mesh import up as local_mesh

    parser = build_parser()
    args = parser.parse_args(argv)
    # `kill -USR1 <pid>` prints every thread's stack to stderr: how to see where a process
    # that will not stop is waiting, without stopping it.
    with contextlib.suppress(OSError, ValueError):  # stderr with no file descriptor (captured)
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    if args.command == "pod":
        return _run_pod(args)
    if args.command == "puller":
        return _run_puller(args)
    if args.command == "router":
        return admin.run_router(args)
    if args.command == "up":
        return local_mesh.run(args)
    if args.command == "serve":
        from mesh import embedded

        logs.configure("INFO")
        rest_port = None if args.no_rest else args.rest_port
        try:
            asyncio.run(embedded.serve(args.models, args.port, args.host, args.capacity, rest_port))
        except MeshError as exc:
            print(f"mesh serve: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command == "controller":
        return _run_controller(args)
    if args.command in admin.COMMANDS:
        return admin.run_admin(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
