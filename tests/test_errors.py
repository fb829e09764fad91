"""Every MeshError class reaches the client as its own gRPC status, through the interceptor, from
the one table (mesh.grpcstatus); a peer's status comes back as the error of that status."""

from __future__ import annotations

import grpc
import pytest
from grpc import aio

from mesh import errors
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.grpcstatus import (
    HTTP_STATUS,
    STATUS_TABLE,
    code_of,
    error_class_named,
    error_from_status,
    http_status,
    status_of,
)
from mesh.grpcutil import ErrorInterceptor, service_handler


def test_every_class_carries_a_status_of_its_own_kind() -> None:
    classes = errors.all_error_classes()
    assert len(classes) >= 9
    listed = {cls for cls, _ in STATUS_TABLE}
    for cls in classes:
        assert cls in listed, cls  # the table names every class, none by inheritance alone
        assert isinstance(code_of(cls), grpc.StatusCode)
        assert code_of(cls) is not grpc.StatusCode.OK
        assert cls.__doc__, cls
        assert not hasattr(cls, "code"), cls  # no transport code in the tree


def test_a_peers_status_comes_back_as_the_error_that_answers_it() -> None:
    """Where a component calls another: every code but OK becomes an error that is answered
    with that same code and the peer's message, so an answer passed on reaches its client as it
    came (a pod's, through the router)."""
    for code in grpc.StatusCode:
        if code is grpc.StatusCode.OK:
            continue
        error = error_from_status(code, f"peer said {code.name}")
        assert isinstance(error, errors.MeshError)
        assert status_of(error) is code, code
        assert str(error) == f"peer said {code.name}"
        assert error_class_named(code.name) is type(error)
    assert isinstance(error_from_status(grpc.StatusCode.NOT_FOUND, ""), errors.ModelNotFound)
    assert isinstance(error_from_status(grpc.StatusCode.UNAVAILABLE, ""), errors.Unavailable)
    assert error_class_named("NO_SUCH_STATUS") is errors.UnknownError
    assert status_of(ValueError("not ours")) is grpc.StatusCode.INTERNAL


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
                want = status_of(exc)
                assert err.value.code() == want, name
                assert str(exc) in err.value.details()
    finally:
        await server.stop(None)


def test_every_class_and_grpc_code_has_an_http_status_and_client_mistakes_are_4xx() -> None:
    for code in grpc.StatusCode:
        assert code in HTTP_STATUS, code
    for cls in errors.all_error_classes():
        status = http_status(code_of(cls))
        if issubclass(cls, errors.InvalidRequest | errors.ModelNotFound):
            assert 400 <= status < 500, cls
        elif code_of(cls) in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            assert status == 500, cls
        else:
            assert status != 500, cls  # a known condition is never an unexplained 500
    assert http_status(code_of(errors.DeadlineExceeded)) == 504
    assert http_status(code_of(errors.CapacityExhausted)) == 429
    assert http_status(code_of(errors.ModelLoadFailed)) == 503
    assert http_status(code_of(errors.Unavailable)) == 503
