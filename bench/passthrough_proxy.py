"""A bare pass-through Python gRPC proxy: the floor of one Python hop, for bench/router.py.

    python bench/passthrough_proxy.py --upstream 127.0.0.1:8085 --port 0

Serves `/inference.GRPCInferenceService/ModelInfer` with a generic grpc.aio handler that takes
the request as bytes (no parsing), forwards them unchanged to one fixed upstream address over
one grpc.aio channel (a generic unary_unary stub with no serializer or deserializer) and returns
the upstream's response bytes unchanged. An upstream error is passed back with its status code
and details. No routing, no model-name scan, no metrics, no interceptor: whatever the router
costs beyond this proxy is the price of its routing.

Prints "proxy listening on 127.0.0.1:PORT" to stderr once ready (and once the upstream channel
is connected); stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

import grpc
from grpc import aio

SERVICE = "inference.GRPCInferenceService"
INFER_PATH = f"/{SERVICE}/ModelInfer"
MAX_MESSAGE = 64 * 2**20


async def serve(host: str, port: int, upstream: str) -> None:
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
    ]
    channel = aio.insecure_channel(upstream, options=options)
    forward: Any = channel.unary_unary(
        INFER_PATH, request_serializer=None, response_deserializer=None
    )
    await asyncio.wait_for(channel.channel_ready(), 30)

    async def model_infer(request: bytes, context: aio.ServicerContext[Any, Any]) -> bytes:
        remaining = context.time_remaining()
        timeout = remaining if remaining is not None and remaining < 1e8 else None
        try:
            response: bytes = await forward(request, timeout=timeout)
            return response
        except aio.AioRpcError as exc:
            await context.abort(exc.code(), exc.details() or "")
            raise  # not reached: abort raises

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(
                model_infer, request_deserializer=None, response_serializer=None
            )
        },
    )
    server = aio.server(options=[*options, ("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise SystemExit(f"proxy: cannot listen on {host}:{port}")
    await server.start()
    print(f"proxy listening on {host}:{bound} -> {upstream}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1.0)
    await channel.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="host:port every request goes to")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.upstream))
    return 0


if __name__ == "__main__":
    sys.exit(main())
