"""The router's gRPC transport: the v2 service (ModelInfer passed through as bytes) and the
management service."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc import aio

from mesh import __version__
from mesh.errors import InvalidRequest, MeshError, ModelNotFound, Unimplemented
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import management_pb2 as mpb
from mesh.grpcstatus import status_name
from mesh.grpcutil import Handler, fan_in
from mesh.http.v2 import EXTENSIONS
from mesh.router.core import Router
from mesh.router.management import Management
from mesh.router.rest import RouterBackend
from mesh.router.wire import model_name_of, name_from_headers

log = logging.getLogger(__name__)

V2_SERVICE = "inference.GRPCInferenceService"
MANAGEMENT_SERVICE = "mesh.management.v1.Management"

Context = aio.ServicerContext[Any, Any]


def _timeout(context: Context) -> float | None:
    remaining = context.time_remaining()
    return remaining if remaining is not None and remaining < 1e8 else None


def _bearer(context: Context, token: str | None) -> bool:
    if token is None:
        return True
    return any(
        key == "authorization" and value == f"Bearer {token}"
        for key, value in context.invocation_metadata() or ()
    )


def _stream_error(data: bytes, status: str, message: str) -> bytes:
    """An error response on ModelStreamInfer naming the request's id, as a pod sends it."""
    response = pb.ModelStreamInferResponse(error_message=message)
    try:
        request = pb.ModelInferRequest.FromString(data)
        response.infer_response.id = request.id
        response.infer_response.model_name = request.model_name
    except DecodeError:
        pass
    response.infer_response.parameters["mesh_status"].string_param = status
    return response.SerializeToString()


class RouterInference:
    def __init__(
        self,
        router: Router,
        metrics: Any = None,
        token: str | None = None,
    ) -> None:
        self._router = router
        self._metrics = metrics
        self._repository: RouterBackend | None = None  # attach_repository
        self._token = token  # the management token also guards repository load and unload
        self.ready = False

    async def model_infer(self, data: bytes, context: Context) -> bytes:
        started = time.perf_counter()
        status = "OK"
        try:
            name, _ = name_from_headers(context.invocation_metadata())
            name = name or model_name_of(data)
            if not name:
                raise InvalidRequest("the request names no model (model_name or mm-model-id)")
            model_id = self._router.resolve(name)
            # A pod's answer is its mesh error: the interceptor answers its status as it came.
            return await self._router.infer(data, model_id, _timeout(context))
        except Exception as exc:
            status = status_name(exc)
            raise
        finally:
            if self._metrics is not None:
                self._metrics.observe("ModelInfer", status, time.perf_counter() - started)

    async def model_stream_infer(
        self, requests: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[bytes]:
        """Triton's stream through the router: every request is forwarded on a stream of its
        own to a copy of its model, and the copies' responses are interleaved as they come.
        A request that fails gets an error response (the stream goes on), as from a pod."""
        header, _ = name_from_headers(context.invocation_metadata())

        async def serve(data: bytes, put: Callable[[bytes], Awaitable[None]]) -> None:
            started = time.perf_counter()
            status = "OK"
            try:
                name = model_name_of(data) or header
                if not name:
                    raise InvalidRequest("the request names no model (model_name or mm-model-id)")
                model_id = self._router.resolve(name)
                first = True
                async for message in self._router.stream(data, model_id, _timeout(context)):
                    if self._metrics is not None:
                        if first:
                            self._metrics.stream_first.observe(time.perf_counter() - started)
                        self._metrics.stream_responses.inc()
                    first = False
                    await put(message)
            except MeshError as exc:  # the router's own, or a pod's answer passed on
                status = status_name(exc)
                await put(_stream_error(data, status, str(exc)))
            except asyncio.CancelledError:
                status = "CANCELLED"
                raise
            except Exception as exc:
                status = "INTERNAL"
                log.exception("ModelStreamInfer failed")
                await put(_stream_error(data, status, f"{type(exc).__name__}: {exc}"))
            finally:
                if self._metrics is not None:
                    self._metrics.observe("ModelStreamInfer", status, time.perf_counter() - started)

        async for item in fan_in(requests, serve):
            yield item

    async def server_live(self, request: pb.ServerLiveRequest, context: Context) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest, context: Context) -> Any:
        return pb.ServerReadyResponse(ready=self.ready)

    async def server_metadata(self, request: pb.ServerMetadataRequest, context: Context) -> Any:
        return pb.ServerMetadataResponse(
            name="mesh", version=__version__, extensions=list(EXTENSIONS)
        )

    async def model_ready(self, request: pb.ModelReadyRequest, context: Context) -> Any:
        model_id = self._router.resolve(request.name)
        return pb.ModelReadyResponse(ready=bool(self._router.holders(model_id)))

    async def model_metadata(self, request: pb.ModelMetadataRequest, context: Context) -> Any:
        model_id = self._router.resolve(request.name)
        deadline = _timeout(context)
        pod_id = await self._router.ensure_loaded(
            model_id, deadline=time.monotonic() + deadline if deadline else None
        )
        instance = self._router.mirror.instances.get(pod_id)
        if instance is None:
            raise ModelNotFound(f"model {request.name!r}: its pod left the mesh")
        pod = self._router.pod_client(pod_id, instance.address, instance.data_address)
        forwarded = pb.ModelMetadataRequest(name=model_id, version=request.version)
        raw = await pod.metadata(forwarded.SerializeToString(), timeout=deadline)
        response = pb.ModelMetadataResponse.FromString(raw)
        response.name = request.name
        return response

    def attach_repository(self, backend: RouterBackend) -> None:
        """Serve the repository extension through `backend` (built after this service, since
        its readiness is this service's)."""
        self._repository = backend

    # -- the model repository extension (mesh.router.rest says what each means in a mesh) ----

    def _backend(self) -> RouterBackend:
        if self._repository is None:
            raise Unimplemented("this router serves no model repository extension")
        return self._repository

    async def repository_index(self, request: pb.RepositoryIndexRequest, context: Context) -> Any:
        _check_repository(request.repository_name)
        entries = await self._backend().repository_index(request.ready)
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(
                    name=e.name, version=e.version, state=e.state, reason=e.reason
                )
                for e in entries
            ]
        )

    async def repository_load(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> Any:
        _check_repository(request.repository_name)
        if not _bearer(context, self._token):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a bearer token is required")
        await self._backend().repository_load(request.model_name, _timeout(context))
        return pb.RepositoryModelLoadResponse()

    async def repository_unload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> Any:
        _check_repository(request.repository_name)
        if not _bearer(context, self._token):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a bearer token is required")
        await self._backend().repository_unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(fn: Handler, req: Any, resp: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=req.FromString, response_serializer=resp.SerializeToString
            )

        methods = {
            # Bytes in, bytes out: no deserializer, no serializer.
            "ModelInfer": grpc.unary_unary_rpc_method_handler(self.model_infer),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(self.model_stream_infer),
            "ServerLive": unary(self.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": unary(self.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ServerMetadata": unary(
                self.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse
            ),
            "ModelReady": unary(self.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ModelMetadata": unary(
                self.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse
            ),
            "RepositoryIndex": unary(
                self.repository_index, pb.RepositoryIndexRequest, pb.RepositoryIndexResponse
            ),
            "RepositoryModelLoad": unary(
                self.repository_load, pb.RepositoryModelLoadRequest, pb.RepositoryModelLoadResponse
            ),
            "RepositoryModelUnload": unary(
                self.repository_unload,
                pb.RepositoryModelUnloadRequest,
                pb.RepositoryModelUnloadResponse,
            ),
        }
        return grpc.method_handlers_generic_handler(V2_SERVICE, methods)


def _check_repository(name: str) -> None:
    if name:
        raise InvalidRequest(f"repository {name!r}: this server has one repository; leave it empty")


class ManagementService:
    def __init__(self, management: Management, token: str | None = None) -> None:
        self._m = management
        self._token = token

    async def _check(self, context: Context) -> None:
        if self._token is None:
            return
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and value == f"Bearer {self._token}":
                return
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a bearer token is required")

    def handler(self) -> grpc.GenericRpcHandler:
        m = self._m

        def method(fn: Any, req: Any, resp: Any) -> Any:
            async def call(request: Any, context: Context) -> Any:
                await self._check(context)
                return await fn(request)

            return grpc.unary_unary_rpc_method_handler(
                call,
                request_deserializer=req.FromString,
                response_serializer=resp.SerializeToString,
            )

        methods = {
            "RegisterModel": method(m.register, mpb.RegisterModelRequest, mpb.ModelStatusResponse),
            "RegisterModels": method(
                m.register_many, mpb.RegisterModelsRequest, mpb.RegisterModelsResponse
            ),
            "UnregisterModel": method(
                m.unregister, mpb.UnregisterModelRequest, mpb.UnregisterModelResponse
            ),
            "GetModelStatus": method(m.status, mpb.GetModelStatusRequest, mpb.ModelStatusResponse),
            "EnsureLoaded": method(
                m.ensure_loaded, mpb.EnsureLoadedRequest, mpb.ModelStatusResponse
            ),
            "ListModels": method(m.list, mpb.ListModelsRequest, mpb.ListModelsResponse),
            "SetVModel": method(m.set_vmodel, mpb.SetVModelRequest, mpb.VModelStatusResponse),
            "DeleteVModel": method(
                m.delete_vmodel, mpb.DeleteVModelRequest, mpb.DeleteVModelResponse
            ),
            "GetVModelStatus": method(
                m.vmodel_status, mpb.GetVModelStatusRequest, mpb.VModelStatusResponse
            ),
            "GetMeshStatus": method(
                m.mesh_status, mpb.GetMeshStatusRequest, mpb.MeshStatusResponse
            ),
        }
        return grpc.method_handlers_generic_handler(MANAGEMENT_SERVICE, methods)
