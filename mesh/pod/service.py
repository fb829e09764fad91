"""The pod's gRPC transport: the KServe v2 service and the runtime control service.

Convert, call the data plane, convert back; errors are mapped by mesh.grpcutil.ErrorInterceptor.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from mesh.errors import InvalidRequest, MeshError
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import runtime_pb2 as rpb
from mesh.grpcstatus import status_name
from mesh.grpcutil import fan_in, service_handler
from mesh.pod.dataplane import DataPlane, ServerState
from mesh.pod.rest import PodBackend
from mesh.pod.wire import message_of, request_of
from mesh.storagewire import from_request
from mesh.tensors import TensorSpec

log = logging.getLogger(__name__)

# Puts one response on a stream (mesh.grpcutil.fan_in).
Put = Callable[[pb.ModelStreamInferResponse], Awaitable[None]]

V2_SERVICE = "inference.GRPCInferenceService"
RUNTIME_SERVICE = "mesh.runtime.v1.Runtime"

Context = aio.ServicerContext[Any, Any]

_MODEL_STATE = {
    "loading": rpb.ModelStatus.LOADING,
    "loaded": rpb.ModelStatus.LOADED,
    "unloading": rpb.ModelStatus.LOADED,
}
_SERVER_STATE = {
    ServerState.STARTING: rpb.RuntimeStatusResponse.STARTING,
    ServerState.READY: rpb.RuntimeStatusResponse.READY,
    ServerState.DRAINING: rpb.RuntimeStatusResponse.DRAINING,
}


def _tensor_metadata(
    specs: tuple[TensorSpec, ...],
) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [
        pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape)
        for s in specs
    ]


def _one_repository(name: str) -> None:
    if name:
        raise InvalidRequest(f"repository {name!r}: this server has one repository; leave it empty")


def _model_override(context: Context) -> str | None:
    """A router resolves vmodels and names the model it chose in mm-model-id."""
    for key, value in context.invocation_metadata() or ():
        if key == "mm-model-id" and value:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def _stream_error(
    request: pb.ModelInferRequest, status: str, message: str
) -> pb.ModelStreamInferResponse:
    response = pb.ModelStreamInferResponse(error_message=message)
    response.infer_response.id = request.id
    response.infer_response.model_name = request.model_name
    response.infer_response.parameters["mesh_status"].string_param = status
    return response


class InferenceService:
    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane
        self._repository = PodBackend(plane)

    async def server_live(self, request: pb.ServerLiveRequest, context: Context) -> Any:
        return pb.ServerLiveResponse(live=self._plane.live())

    async def server_ready(self, request: pb.ServerReadyRequest, context: Context) -> Any:
        return pb.ServerReadyResponse(ready=self._plane.ready())

    async def server_metadata(self, request: pb.ServerMetadataRequest, context: Context) -> Any:
        name, version, extensions = self._plane.server_metadata()
        return pb.ServerMetadataResponse(
            name=name, version=version, extensions=[*extensions, "model_repository"]
        )

    # -- the model repository extension (mesh.pod.rest says what it means on a pod) ------------

    async def repository_index(self, request: pb.RepositoryIndexRequest, context: Context) -> Any:
        _one_repository(request.repository_name)
        entries = await self._repository.repository_index(request.ready)
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
        _one_repository(request.repository_name)
        remaining = context.time_remaining()
        timeout = remaining if remaining is not None and remaining < 1e8 else None
        await self._repository.repository_load(request.model_name, timeout)
        return pb.RepositoryModelLoadResponse()

    async def repository_unload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> Any:
        _one_repository(request.repository_name)
        await self._repository.repository_unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    async def model_ready(self, request: pb.ModelReadyRequest, context: Context) -> Any:
        return pb.ModelReadyResponse(ready=await self._plane.model_ready(request.name))

    async def model_metadata(self, request: pb.ModelMetadataRequest, context: Context) -> Any:
        signature, platform = await self._plane.model_metadata(request.name)
        return pb.ModelMetadataResponse(
            name=request.name,
            platform=platform,
            inputs=_tensor_metadata(signature.inputs),
            outputs=_tensor_metadata(signature.outputs),
        )

    async def model_infer(self, request: pb.ModelInferRequest, context: Context) -> Any:
        response = await self._plane.infer(request_of(request), _model_override(context))
        return message_of(response)

    async def model_stream_infer(
        self, requests: AsyncIterator[pb.ModelInferRequest], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Triton's stream: every request runs at once; responses go out as they come.

        A request's error is a response with `error_message` (the stream goes on), whose
        `infer_response` names the request's id and carries the status as `mesh_status`;
        work cancelled under a request is such an error, UNAVAILABLE.
        """
        override = _model_override(context)

        async def serve(
            request: pb.ModelInferRequest,
            put: Callable[[pb.ModelStreamInferResponse], Awaitable[None]],
        ) -> None:
            try:
                async for response in self._plane.stream_infer(request_of(request), override):
                    await put(pb.ModelStreamInferResponse(infer_response=message_of(response)))
            except MeshError as exc:
                await put(_stream_error(request, status_name(exc), str(exc)))
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # the stream closed: nobody reads an answer
                # Its work was cancelled, not the request: unanswered, it would have no response.
                message = "the pod's work for the request was cancelled"
                await put(_stream_error(request, "UNAVAILABLE", message))
            except Exception as exc:
                log.exception("ModelStreamInfer failed")
                await put(_stream_error(request, "INTERNAL", f"{type(exc).__name__}: {exc}"))

        async for item in fan_in(requests, serve):
            yield item

    def handler(self) -> grpc.GenericRpcHandler:
        stream = grpc.stream_stream_rpc_method_handler(
            self.model_stream_infer,
            request_deserializer=pb.ModelInferRequest.FromString,
            response_serializer=pb.ModelStreamInferResponse.SerializeToString,
        )
        return service_handler(
            V2_SERVICE,
            streams={"ModelStreamInfer": stream},
            methods={
                "ServerLive": (self.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
                "ServerReady": (self.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
                "ServerMetadata": (
                    self.server_metadata,
                    pb.ServerMetadataRequest,
                    pb.ServerMetadataResponse,
                ),
                "ModelReady": (self.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
                "ModelMetadata": (
                    self.model_metadata,
                    pb.ModelMetadataRequest,
                    pb.ModelMetadataResponse,
                ),
                "ModelInfer": (self.model_infer, pb.ModelInferRequest, pb.ModelInferResponse),
                "RepositoryIndex": (
                    self.repository_index,
                    pb.RepositoryIndexRequest,
                    pb.RepositoryIndexResponse,
                ),
                "RepositoryModelLoad": (
                    self.repository_load,
                    pb.RepositoryModelLoadRequest,
                    pb.RepositoryModelLoadResponse,
                ),
                "RepositoryModelUnload": (
                    self.repository_unload,
                    pb.RepositoryModelUnloadRequest,
                    pb.RepositoryModelUnloadResponse,
                ),
            },
        )


class RuntimeService:
    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane

    async def load_model(self, request: rpb.LoadModelRequest, context: Context) -> Any:
        try:
            storage, options = from_request(
                request.storage if request.HasField("storage") else None,
                request.storage_key,
                request.storage_path,
                request.options,
            )
        except InvalidRequest as exc:
            raise InvalidRequest(f"model {request.model_id!r}: {exc}") from None
        outcome = await self._plane.load(
            request.model_id, request.path, request.format, options, storage
        )
        return rpb.LoadModelResponse(
            model_id=outcome.model_id,
            size_bytes=outcome.size,
            measured_bytes=outcome.measured or 0,
            estimated_bytes=outcome.estimated,
            load_seconds=outcome.seconds,
            already_loaded=outcome.already_loaded,
            evicted=outcome.evicted,
            artifact_bytes=outcome.artifact_bytes,
        )

    async def unload_model(self, request: rpb.UnloadModelRequest, context: Context) -> Any:
        freed = await self._plane.unload(request.model_id)
        return rpb.UnloadModelResponse(was_loaded=freed is not None, freed_bytes=freed or 0)

    async def runtime_status(self, request: rpb.RuntimeStatusRequest, context: Context) -> Any:
        view = self._plane.status()
        response = rpb.RuntimeStatusResponse(
            state=_SERVER_STATE[self._plane.state],
            capacity_bytes=view.capacity,
            used_bytes=view.used,
            loading_count=view.loading,
            runtimes=self._plane.runtimes.names,
            device=str(self._plane.device),
            host_capacity_bytes=view.host_capacity,
            host_used_bytes=view.host_used,
        )
        for m in view.models:
            response.models.add(
                model_id=m.model_id,
                format=m.format,
                state=_MODEL_STATE[m.state],
                size_bytes=m.size,
                measured_bytes=m.measured or 0,
                estimated_bytes=m.estimated,
                last_used=m.last_used,
                in_flight=m.in_flight,
                loaded_at=m.loaded_at,
                device_bytes=m.size,
                host_bytes=m.host_measured or 0,
            )
        for d in view.demoted:
            response.demoted.add(
                model_id=d.model_id,
                format=d.format,
                state=rpb.ModelStatus.DEMOTED,
                size_bytes=d.host_bytes,
                host_bytes=d.host_bytes,
                host_copy_is_model=d.moved,
            )
        for f in view.failures:
            response.models.add(
                model_id=f.model_id,
                format=f.format,
                state=rpb.ModelStatus.FAILED,
                error=f.error,
                failed_at=f.at_wall,
            )
        return response

    def handler(self) -> grpc.GenericRpcHandler:
        return service_handler(
            RUNTIME_SERVICE,
            {
                "LoadModel": (self.load_model, rpb.LoadModelRequest, rpb.LoadModelResponse),
                "UnloadModel": (self.unload_model, rpb.UnloadModelRequest, rpb.UnloadModelResponse),
                "RuntimeStatus": (
                    self.runtime_status,
                    rpb.RuntimeStatusRequest,
                    rpb.RuntimeStatusResponse,
                ),
            },
        )
