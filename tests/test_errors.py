"""Every MeshError class reaches the client as its own gRPC status, through the interceptor."""

from __future__ import annotations

import grpc
import pytest
from grpc import aio

from mesh import errors
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.grpcutil import ErrorInterceptor, service_handler


def test_every_class_carries_a_status_of_its_own_kind() -> None:
    classes = errors.all_error_classes()
    assert len(classes) >= 9
    for cls in classes:
        assert isinstance(cls.code, grpc.StatusCode)
        assert cls.code is not grpc.StatusCode.OK
        assert cls.__doc__, cls


async def test_interceptor_maps_every_class_and_unexpected_errors() -> None:
    raised: dict[str, BaseException] = {
        cls.__name__: cls(f"boom from {cls.__name__}") for cls in errors.all_error_classes()
    }
    raised["ValueError"] = ValueError("not ours")

    async def handler(request: pb.ModelReadyRequest, context: object) -> pb.ModelReadyResponse:
        raise raised[request.name]

    server = aio.server(interceptors=[ErrorInterceptor()])
    server.add_generic_rpc_handlers(
        (
            service_handler(
                "test.Errors",
                {"Raise": (handler, pb.ModelReadyRequest, pb.ModelReadyResponse)},
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(
                "/test.Errors/Raise",
                request_serializer=pb.ModelReadyRequest.SerializeToString,
                response_deserializer=pb.ModelReadyResponse.FromString,
            )
            for name, exc in raised.items():
                with pytest.raises(aio.AioRpcError) as err:
                    await call(pb.ModelReadyRequest(name=name))
                want = exc.code if isinstance(exc, errors.MeshError) else grpc.StatusCode.INTERNAL
                assert err.value.code() == want, name
                assert str(exc) in err.value.details()
    finally:
        await server.stop(None)
