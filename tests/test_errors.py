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


def test_every_class_and_grpc_code_has_an_http_status_and_client_mistakes_are_4xx() -> None:
    for code in grpc.StatusCode:
        assert code in errors.HTTP_STATUS, code
    for cls in errors.all_error_classes():
        status = errors.http_status(cls.code)
        if issubclass(cls, errors.InvalidRequest | errors.ModelNotFound):
            assert 400 <= status < 500, cls
        elif cls.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            assert status == 500, cls
        else:
            assert status != 500, cls  # a known condition is never an unexplained 500
    assert errors.http_status(errors.DeadlineExceeded.code) == 504
    assert errors.http_status(errors.CapacityExhausted.code) == 503
    assert errors.http_status(errors.ModelLoadFailed.code) == 503
    assert errors.http_status(errors.Unavailable.code) == 503
