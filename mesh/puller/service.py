"""The puller's gRPC transport: convert, call the core (mesh.puller.core), convert back.

Errors are mapped to status codes by mesh.grpcutil.ErrorInterceptor; their messages name the
model, storage key and path and never a credential.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc import aio

from mesh.errors import MeshError
from mesh.gen import puller_pb2 as ppb
from mesh.grpcutil import service_handler
from mesh.puller.core import Puller
from mesh.puller.records import PULLER_SERVICE
from mesh.storagewire import from_request

Context = aio.ServicerContext[Any, Any]


class PullerService:
    def __init__(self, puller: Puller) -> None:
        self._puller = puller

    async def pull(self, request: ppb.PullRequest, context: Context) -> Any:
        try:
            storage, _ = from_request(
                request.storage if request.HasField("storage") else None,
                request.storage_key,
                request.path,
                request.options,
                prefixed=False,
            )
        except MeshError as exc:
            self._puller.failed(
                request.model_id, f"{request.storage_key or 'default'}:{request.path}", exc
            )
            raise
        result = await self._puller.pull(request.model_id, storage)
        return ppb.PullResponse(
            model_id=result.model_id,
            local_path=str(result.local_path),
            size_bytes=result.size,
            cache_hit=result.cache_hit,
            seconds=result.seconds,
        )

    async def release(self, request: ppb.ReleaseRequest, context: Context) -> Any:
        return ppb.ReleaseResponse(was_held=await self._puller.release(request.model_id))

    async def cache_status(self, request: ppb.CacheStatusRequest, context: Context) -> Any:
        view = self._puller.status()
        response = ppb.CacheStatusResponse(
            capacity_bytes=view.capacity,
            used_bytes=view.used,
            reserved_bytes=view.reserved,
            in_use_bytes=view.in_use,
        )
        for a in view.artifacts:
            response.artifacts.add(
                storage_key=a.storage_key,
                source=a.source,
                local_path=str(a.local_path),
                size_bytes=a.size,
                model_ids=a.models,
                last_used=a.last_used,
            )
        return response

    def handler(self) -> grpc.GenericRpcHandler:
        return service_handler(
            PULLER_SERVICE,
            {
                "Pull": (self.pull, ppb.PullRequest, ppb.PullResponse),
                "Release": (self.release, ppb.ReleaseRequest, ppb.ReleaseResponse),
                "CacheStatus": (
                    self.cache_status,
                    ppb.CacheStatusRequest,
                    ppb.CacheStatusResponse,
                ),
            },
        )
