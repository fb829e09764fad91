"""A null KServe v2 server: the floor of one Python gRPC hop, for bench/pod.py.

    python bench/echo_server.py --port 0

Serves `/inference.GRPCInferenceService/ModelInfer` with a generic grpc.aio handler that takes
the request as bytes (no parsing) and returns one fixed, pre-serialized ModelInferResponse. It
prints "echo listening on 127.0.0.1:PORT" to stderr once ready and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import grpc
from grpc import aio

SERVICE = "inference.GRPCInferenceService"


def fixed_response() -> bytes:
    """A small, valid ModelInferResponse: one FP32 output of shape [1]."""
    from mesh.gen import grpc_predict_v2_pb2 as pb

    response = pb.ModelInferResponse(
        model_name="echo",
        outputs=[
            pb.ModelInferResponse.InferOutputTensor(name="output", datatype="FP32", shape=[1])
        ],
        raw_output_contents=[b"\x00\x00\x80\x3f"],
    )
    return response.SerializeToString()


async def serve(host: str, port: int) -> None:
    reply = fixed_response()

    async def model_infer(request: bytes, context: aio.ServicerContext) -> bytes:  # type: ignore[type-arg]
        return reply

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(
                model_infer, request_deserializer=None, response_serializer=None
            )
        },
    )
    server = aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise SystemExit(f"echo: cannot listen on {host}:{port}")
    await server.start()
    print(f"echo listening on {host}:{bound}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
