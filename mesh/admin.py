"""`mesh router` and the commands that manage a mesh through a router's management API.

mesh register fraud-v3 --format xgboost --storage-path fraud/v3 [--storage-key s3]
    [--bucket B] [--unpack auto|true|false] [--sha256 HEX]   (the StorageRef's options)
mesh register --file models.jsonl       (many models, RegisterModels calls: mesh/bulk.py)
mesh list | mesh status | mesh status fraud-v3 -o json | mesh load fraud-v3
mesh unregister fraud-v3
mesh vmodel set fraud --to fraud-v3 | mesh vmodel status fraud | mesh vmodel delete fraud

Each prints a table, or JSON or YAML with -o; the router, its token and TLS come from flags or
MESH_ROUTER, MESH_TOKEN, MESH_TLS, MESH_TLS_CA, MESH_TLS_CERT, MESH_TLS_KEY,
MESH_TLS_SERVER_NAME and MESH_TIMEOUT (AdminSettings).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from pydantic import Field, ValidationError
from pydantic_settings import SettingsConfigDict

from mesh import logs
from mesh.errors import InvalidRequest, MeshError
from mesh.gen import management_pb2 as mpb
from mesh.present import (
    OUTPUTS,
    dump,
    mesh_tables,
    model_detail,
    models_table,
    table,
    to_data,
    vmodel_detail,
)
from mesh.settings import CommandSettings, add_flags
from mesh.storageref import StorageRef, Unpack, check_storage
from mesh.storagewire import to_message

COMMANDS = ("register", "unregister", "status", "list", "vmodel", "load")


def add_router_parser(sub: Any) -> None:
    from mesh.router.settings import RouterSettings

    p = sub.add_parser("router", help="run a router", description="Run a router.")
    add_flags(p, RouterSettings)


def run_router(args: argparse.Namespace) -> int:
    from mesh.router.server import serve
    from mesh.router.settings import RouterSettings

    try:
        settings = RouterSettings.from_args(args)
    except (ValidationError, ValueError) as exc:
        print(f"mesh router: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_json)
    try:
        asyncio.run(serve(settings))
    except MeshError as exc:  # a port in use, say: one line, not a traceback
        print(f"mesh router: {exc}", file=sys.stderr)
        return 2
    return 0


class AdminSettings(CommandSettings):
    """Where the admin commands find the router, from flags and MESH_* environment variables
    (MESH_ROUTER, MESH_TOKEN, MESH_TLS, MESH_TLS_CA, ...: mesh.settings)."""

    # Other MESH_* variables belong to other commands.
    model_config = SettingsConfigDict(env_prefix="MESH_", extra="ignore")

    router: str = Field("127.0.0.1:8033", description="router address")
    token: str | None = Field(None, description="bearer token for the management API")
    tls: bool = Field(False, description="use TLS with the system's CAs")
    tls_ca: Path | None = Field(None, description="CA of the router's certificate; implies TLS")
    tls_cert: Path | None = Field(None, description="client certificate, for mutual TLS")
    tls_key: Path | None = Field(None, description="the client certificate's key")
    tls_server_name: str | None = Field(
        None, description="the name the router's certificate carries, when not its address"
    )
    timeout: float = Field(30.0, gt=0, description="seconds to wait for an answer")

    def channel(self) -> grpc.Channel:
        if self.tls_cert is not None and self.tls_key is None:
            raise ValueError("--tls-cert needs --tls-key")
        if not (self.tls or self.tls_ca or self.tls_cert):
            return grpc.insecure_channel(self.router)
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.tls_ca.read_bytes() if self.tls_ca else None,
            private_key=self.tls_key.read_bytes() if self.tls_key else None,
            certificate_chain=self.tls_cert.read_bytes() if self.tls_cert else None,
        )
        options = []
        if self.tls_server_name:
            options.append(("grpc.ssl_target_name_override", self.tls_server_name))
        return grpc.secure_channel(self.router, creds, options=options)


def add_admin_parsers(sub: Any) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        add_flags(p, AdminSettings, section="the router")
        p.add_argument(
            "-o", "--output", choices=OUTPUTS, default="table",
            help="table (default), json or yaml",
        )  # fmt: skip

    p = sub.add_parser(
        "register", help="register a model", description="Register a model, or a file of them."
    )
    common(p)
    p.add_argument("model_id", nargs="?", help="the model (without --file)")
    p.add_argument("--format", help="onnx, xgboost, torch, ... (required without --file)")
    p.add_argument("--storage-path", help="path in the storage entry (required without --file)")
    p.add_argument(
        "--file", type=Path,
        help="register every model of this file (JSON list, JSON lines or YAML of "
        "RegisterModelRequest objects) in batches",
    )  # fmt: skip
    p.add_argument("--storage-key", default="", help="storage entry (default: default)")
    p.add_argument(
        "--bucket", default="",
        help="another bucket (or Azure container) than the storage entry's",
    )  # fmt: skip
    p.add_argument(
        "--unpack", choices=[u.value for u in Unpack], default=Unpack.AUTO.value,
        help="auto (default: .tar, .tar.gz, .tgz and .zip objects are unpacked), true (the "
        "object must be an archive) or false (kept as it is)",
    )  # fmt: skip
    p.add_argument(
        "--sha256", default="", metavar="HEX",
        help="the digest (64 hex digits) the object must have; checked at every download",
    )  # fmt: skip
    p.add_argument("--min-copies", type=int, default=0, help="copies kept loaded when idle")
    p.add_argument("--max-copies", type=int, default=0, help="most copies (0: no bound)")
    p.add_argument("--load-now", action="store_true", help="return once a copy is loaded")
    p.add_argument("--base", default="", help="a LoRA adapter's base model (registered)")
    p = sub.add_parser(
        "unregister", help="unregister a model", description="Forget a model, unload it."
    )
    common(p)
    p.add_argument("model_id")
    p = sub.add_parser(
        "status",
        help="show the mesh, or one model or vmodel",
        description="Without MODEL: every pod and model. With MODEL: that model or vmodel.",
    )
    common(p)
    p.add_argument("model_id", nargs="?", metavar="MODEL", help="a model or vmodel")
    p.add_argument("-w", "--watch", action="store_true", help="print again every --interval")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between --watch prints")
    p = sub.add_parser(
        "load",
        help="load a model now, retrying one whose loads failed",
        description="Load a copy now (clearing the model's recorded failures first).",
    )
    common(p)
    p.add_argument("model_id")
    p = sub.add_parser("list", help="list registered models", description="List models.")
    common(p)
    p = sub.add_parser(
        "vmodel",
        help="set, status or delete a vmodel",
        description="mesh vmodel set NAME --to MODEL | status NAME | delete NAME",
    )
    common(p)
    p.add_argument("action", choices=["set", "status", "delete"])
    p.add_argument("vmodel_id")
    p.add_argument("--to", help="the target model (for set)")
    p.add_argument("--wait", action="store_true", help="set: return once clients switched")


def _settings(args: argparse.Namespace) -> AdminSettings:
    return AdminSettings.from_args(args)


def _show(response: Any, args: argparse.Namespace, now: float) -> str:
    """One answer as the chosen output."""
    if args.output != "table":
        return dump(to_data(response), args.output)
    if isinstance(response, mpb.MeshStatusResponse):
        return mesh_tables(response)
    if isinstance(response, mpb.ListModelsResponse):
        return models_table(response.models, now)
    if isinstance(response, mpb.ModelStatusResponse):
        return model_detail(response, now)
    if isinstance(response, mpb.VModelStatusResponse):
        return vmodel_detail(response)
    raise TypeError(f"no table for {type(response).__name__}")


def _call(stub: Any, args: argparse.Namespace, settings: AdminSettings) -> Any:
    metadata = (("authorization", f"Bearer {settings.token}"),) if settings.token else ()
    kw: dict[str, Any] = {"metadata": metadata, "timeout": settings.timeout}
    if args.command == "register" and args.file is not None:
        from mesh import bulk

        try:
            models = bulk.read_models(args.file)
        except (bulk.BadFile, OSError) as exc:
            raise _Usage(f"mesh register: {exc}") from exc
        return bulk.register_all(stub, models, **kw)
    if args.command == "register":
        if not (args.model_id and args.format and args.storage_path):
            raise _Usage("mesh register: MODEL, --format and --storage-path are required")
        options = mpb.ModelOptions(min_copies=args.min_copies, max_copies=args.max_copies)
        return stub.RegisterModel(
            mpb.RegisterModelRequest(
                model_id=args.model_id, format=args.format, storage=to_message(_storage(args)),
                options=options, load_now=args.load_now, base=args.base,
            ),
            **kw,
        )  # fmt: skip
    if args.command == "unregister":
        return stub.UnregisterModel(mpb.UnregisterModelRequest(model_id=args.model_id), **kw)
    if args.command == "status" and not args.model_id:
        return stub.GetMeshStatus(mpb.GetMeshStatusRequest(), **kw)
    if args.command == "status":
        try:
            return stub.GetModelStatus(mpb.GetModelStatusRequest(model_id=args.model_id), **kw)
        except grpc.RpcError as exc:
            if exc.code() is not grpc.StatusCode.NOT_FOUND:
                raise
            try:
                vmodel = stub.GetVModelStatus(
                    mpb.GetVModelStatusRequest(vmodel_id=args.model_id), **kw
                )
            except grpc.RpcError as vexc:
                if vexc.code() is grpc.StatusCode.NOT_FOUND:
                    raise exc from None  # neither: the model's answer says so
                raise
            model = stub.GetModelStatus(
                mpb.GetModelStatusRequest(model_id=vmodel.active_model_id), **kw
            )
            return {"vmodel": vmodel, "model": model}
    if args.command == "load":
        return stub.EnsureLoaded(mpb.EnsureLoadedRequest(model_id=args.model_id, retry=True), **kw)
    if args.command == "list":
        return stub.ListModels(mpb.ListModelsRequest(), **kw)
    if args.action == "set":
        if not args.to:
            raise _Usage("mesh vmodel set: --to MODEL is required")
        return stub.SetVModel(
            mpb.SetVModelRequest(vmodel_id=args.vmodel_id, target_model_id=args.to, wait=args.wait),
            **kw,
        )
    if args.action == "status":
        return stub.GetVModelStatus(mpb.GetVModelStatusRequest(vmodel_id=args.vmodel_id), **kw)
    return stub.DeleteVModel(mpb.DeleteVModelRequest(vmodel_id=args.vmodel_id), **kw)


class _Usage(Exception):
    pass


def _storage(args: argparse.Namespace) -> StorageRef:
    """The registration's StorageRef from the flags, checked as the router will check it, so
    that a bad value is refused here naming its flag (the option `sha256` is `--sha256`)."""
    ref = StorageRef(
        args.storage_key, args.storage_path, args.bucket, Unpack(args.unpack), args.sha256
    )
    try:
        return check_storage(ref, "mesh register")
    except InvalidRequest as exc:
        raise _Usage(str(exc).replace(": option ", ": --", 1)) from None


def _render(response: Any, args: argparse.Namespace) -> str:
    now = getattr(response, "now", 0.0) or time.time()
    if isinstance(response, mpb.RegisterModelsResponse) and args.output == "table":
        from mesh import bulk

        failed, line = bulk.summary(response)
        return (table(("NAME", "CODE", "WHY"), failed) + "\n" if failed else "") + line
    if isinstance(response, dict):  # a vmodel and the model it serves
        if args.output != "table":
            data = {"vmodel": to_data(response["vmodel"]), "model": to_data(response["model"])}
            return dump(data, args.output)
        return vmodel_detail(response["vmodel"]) + "\n\n" + model_detail(response["model"], now)
    if args.output == "table" and hasattr(response, "existed"):
        name = getattr(args, "model_id", None) or getattr(args, "vmodel_id", "")
        return table(("NAME", "RESULT"), [(name, "removed" if response.existed else "not found")])
    return _show(response, args, now)


def run_admin(args: argparse.Namespace) -> int:
    from mesh.gen import management_pb2_grpc

    name = f"mesh {args.command}" + (f" {args.action}" if args.command == "vmodel" else "")
    try:
        settings = _settings(args)
        channel = settings.channel()
    except (ValidationError, ValueError, OSError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    watch = args.command == "status" and args.watch
    with channel:
        stub = management_pb2_grpc.ManagementStub(channel)  # type: ignore[no-untyped-call]
        try:
            while True:
                response = _call(stub, args, settings)
                if watch and args.output == "json":  # one JSON document a line, to stream
                    text = json.dumps(to_data(response), separators=(",", ":"))
                else:
                    text = _render(response, args)
                if watch and args.output == "table" and sys.stdout.isatty():
                    sys.stdout.write("\x1b[H\x1b[2J")  # clear the screen, as watch(1) does
                print(text, flush=True)
                if isinstance(response, mpb.RegisterModelsResponse):
                    return 1 if any(r.code for r in response.results) else 0
                if not watch:
                    return 0
                if args.output == "table":
                    print(flush=True)
                time.sleep(args.interval)
        except _Usage as exc:
            print(exc, file=sys.stderr)
            return 2
        except grpc.RpcError as exc:
            code = exc.code()
            details = exc.details()
            if code is grpc.StatusCode.UNAVAILABLE:
                details = f"cannot reach the router at {settings.router}: {details}"
            print(f"{name}: {code.name}: {details}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0
