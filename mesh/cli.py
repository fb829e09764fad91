"""The `mesh` command line: one subcommand per process.

    mesh pod --models ./models --port 8085

Each command's flags are generated from its settings (mesh.settings): every setting has a flag
and a MESH_<COMMAND>_* variable, both shown in --help with the default. Flags override the
variables, which override defaults; the settings are validated before anything starts, and a
bad value exits with status 2 and a clear message.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import signal
import sys
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import ValidationError

from mesh import __version__, logs
from mesh.errors import MeshError
from mesh.settings import CommandSettings, add_flags

S = TypeVar("S", bound=CommandSettings)


def settings_from(command: str, cls: type[S], args: argparse.Namespace) -> S | None:
    """`cls` from the parsed flags over MESH_* variables over defaults; None (after one clear
    message on stderr) when a value does not validate."""
    try:
        return cls.from_args(args)
    except (ValidationError, ValueError) as exc:
        print(f"mesh {command}: invalid settings:\n{exc}", file=sys.stderr)
        return None


def _pod_parser(sub: Any) -> None:
    from mesh.pod.settings import PodSettings

    p = sub.add_parser("pod", help="run a serving pod", description="Run a serving pod.")
    add_flags(p, PodSettings)


def _run_pod(args: argparse.Namespace) -> int:
    from mesh.pod.server import serve
    from mesh.pod.settings import PodSettings

    settings = settings_from("pod", PodSettings, args)
    if settings is None:
        return 2
    logs.configure(settings.log_level, settings.log_json)
    try:
        return asyncio.run(serve(settings)) or 0  # 75 (EXIT_RECYCLE): replace me
    except MeshError as exc:
        print(f"mesh pod: {exc}", file=sys.stderr)
        return 2


def _puller_parser(sub: Any) -> None:
    from mesh.puller.settings import PullerSettings

    p = sub.add_parser(
        "puller",
        help="run a pod's puller sidecar",
        description="Fetch model artifacts from object storage into a bounded disk cache.",
    )
    add_flags(p, PullerSettings)


def _run_puller(args: argparse.Namespace) -> int:
    from mesh.puller.server import serve
    from mesh.puller.settings import PullerSettings

    settings = settings_from("puller", PullerSettings, args)
    if settings is None:
        return 2
    logs.configure(settings.log_level, settings.log_json)
    try:
        asyncio.run(serve(settings))
    except MeshError as exc:
        print(f"mesh puller: {exc}", file=sys.stderr)
        return 2
    return 0


def _controller_parser(sub: Any) -> None:
    from mesh.controller.settings import ControllerSettings

    p = sub.add_parser(
        "controller",
        help="run the Kubernetes controller for Predictor resources",
        description="Register Predictor resources with the mesh and write their status back.",
    )
    add_flags(p, ControllerSettings)


def _run_controller(args: argparse.Namespace) -> int:
    from mesh.controller.server import run
    from mesh.controller.settings import ControllerSettings

    settings = settings_from("controller", ControllerSettings, args)
    if settings is None:
        return 2
    logs.configure(settings.log_level, settings.log_json)
    try:
        run(settings)
    except MeshError as exc:
        print(f"mesh controller: {exc}", file=sys.stderr)
        return 2
    return 0


def _serve_parser(sub: Any) -> None:
    from mesh.embedded import ServeSettings

    p = sub.add_parser(
        "serve",
        help="the whole mesh in one process (no etcd)",
        description="Router, one pod and the models under DIR in one process.",
    )
    add_flags(p, ServeSettings)


def _run_serve(args: argparse.Namespace) -> int:
    from mesh import embedded

    settings = settings_from("serve", embedded.ServeSettings, args)
    if settings is None:
        return 2
    logs.configure(settings.log_level, settings.log_json)
    try:
        asyncio.run(embedded.serve_settings(settings))
    except MeshError as exc:
        print(f"mesh serve: {exc}", file=sys.stderr)
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
    _serve_parser(sub)
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
        return _run_serve(args)
    if args.command == "controller":
        return _run_controller(args)
    if args.command in admin.COMMANDS:
        return admin.run_admin(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
