"""`mesh router` and the commands that manage a mesh through a router's management API.

mesh register fraud-v3 --format xgboost --storage-path fraud/v3 [--storage-key s3]
mesh list | mesh status fraud-v3 | mesh unregister fraud-v3
mesh vmodel set fraud --to fraud-v3 | mesh vmodel status fraud | mesh vmodel delete fraud
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import grpc
from pydantic import ValidationError

from mesh import logs

COMMANDS = ("register", "unregister", "status", "list", "vmodel", "load")


def add_router_parser(sub: Any) -> None:
    p = sub.add_parser("router", help="run a router", description="Run a router.")
    p.add_argument("--etcd", help="etcd endpoints (default http://127.0.0.1:2379)")
    p.add_argument("--etcd-prefix", help="root key prefix of the mesh (default /mesh/)")
    p.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, help="gRPC port (default 8033)")
    p.add_argument("--rest-port", type=int, help="v2 REST port (default 8008)")
    p.add_argument("--no-rest", action="store_true", help="serve no REST port")
    p.add_argument("--metrics-port", type=int, help="Prometheus port (default 2112)")
    p.add_argument("--router-id", help="this router's name (default: host name and a suffix)")
    p.add_argument("--tls-cert", help="certificate for the client-facing port")
    p.add_argument("--tls-key", help="private key for the client-facing port")
    p.add_argument("--tls-ca", help="CA that client certificates must chain to (mutual TLS)")
    p.add_argument("--management-token", help="bearer token the management API requires")
    p.add_argument("--load-timeout", type=float, help="longest a cache miss may take (120 s)")
    p.add_argument("--failure-ttl", type=float, help="seconds a failed load is remembered (900)")
    p.add_argument(
        "--failure-attempts", type=int, help="failed loads within the TTL that stop retries (3)"
    )
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING (default INFO)")


def run_router(args: argparse.Namespace) -> int:
    from mesh.router.server import serve
    from mesh.router.settings import RouterSettings

    overrides = {
        k: v for k, v in vars(args).items() if v is not None and k not in ("command", "no_rest")
    }
    if args.no_rest:
        overrides["rest_port"] = None
    try:
        settings = RouterSettings(**overrides)
    except ValidationError as exc:
        print(f"mesh router: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_json)
    from mesh.errors import MeshError

    try:
        asyncio.run(serve(settings))
    except MeshError as exc:  # a port in use, say: one line, not a traceback
        print(f"mesh router: {exc}", file=sys.stderr)
        return 2
    return 0


def add_admin_parsers(sub: Any) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--router", default="127.0.0.1:8033", help="router address")
        p.add_argument("--token", help="bearer token for the management API")

    p = sub.add_parser("register", help="register a model")
    common(p)
    p.add_argument("model_id")
    p.add_argument("--format", required=True, help="onnx, xgboost, torch, ...")
    p.add_argument("--storage-path", required=True)
    p.add_argument("--storage-key", default="")
    p.add_argument("--min-copies", type=int, default=0)
    p.add_argument("--max-copies", type=int, default=0)
    p.add_argument("--load-now", action="store_true")
    for name in ("unregister", "status"):
        p = sub.add_parser(name, help=f"{name} a model")
        common(p)
        p.add_argument("model_id")
    p = sub.add_parser("load", help="load a model now, retrying one whose loads failed")
    common(p)
    p.add_argument("model_id")
    p = sub.add_parser("list", help="list registered models")
    common(p)
    p = sub.add_parser("vmodel", help="set, show or delete a vmodel")
    common(p)
    p.add_argument("action", choices=["set", "status", "delete"])
    p.add_argument("vmodel_id")
    p.add_argument("--to", help="the target model (for set)")


def run_admin(args: argparse.Namespace) -> int:
    from mesh.gen import management_pb2 as mpb
    from mesh.gen import management_pb2_grpc

    metadata = (("authorization", f"Bearer {args.token}"),) if args.token else ()
    with grpc.insecure_channel(args.router) as channel:
        stub = management_pb2_grpc.ManagementStub(channel)  # type: ignore[no-untyped-call]
        try:
            if args.command == "register":
                options = mpb.ModelOptions(min_copies=args.min_copies, max_copies=args.max_copies)
                response: Any = stub.RegisterModel(
                    mpb.RegisterModelRequest(
                        model_id=args.model_id, format=args.format,
                        storage_key=args.storage_key, storage_path=args.storage_path,
                        options=options, load_now=args.load_now,
                    ),
                    metadata=metadata,
                )  # fmt: skip
            elif args.command == "unregister":
                response = stub.UnregisterModel(
                    mpb.UnregisterModelRequest(model_id=args.model_id), metadata=metadata
                )
            elif args.command == "status":
                response = stub.GetModelStatus(
                    mpb.GetModelStatusRequest(model_id=args.model_id), metadata=metadata
                )
            elif args.command == "load":
                response = stub.EnsureLoaded(
                    mpb.EnsureLoadedRequest(model_id=args.model_id, retry=True), metadata=metadata
                )
            elif args.command == "list":
                response = stub.ListModels(mpb.ListModelsRequest(), metadata=metadata)
            elif args.action == "set":
                if not args.to:
                    print("mesh vmodel set: --to MODEL is required", file=sys.stderr)
                    return 2
                response = stub.SetVModel(
                    mpb.SetVModelRequest(vmodel_id=args.vmodel_id, target_model_id=args.to),
                    metadata=metadata,
                )
            elif args.action == "status":
                response = stub.GetVModelStatus(
                    mpb.GetVModelStatusRequest(vmodel_id=args.vmodel_id), metadata=metadata
                )
            else:
                response = stub.DeleteVModel(
                    mpb.DeleteVModelRequest(vmodel_id=args.vmodel_id), metadata=metadata
                )
        except grpc.RpcError as exc:
            print(f"mesh {args.command}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(response)
    return 0
