"""The standard gRPC health service (grpc.health.v1) on every mesh server's port.

Kubernetes' native gRPC probes, grpc_health_probe and load balancers ask `Check` with the
service "" (the server as a whole); `Watch` streams each change. A process sets its status
once it serves (`serving()`) and turns it off the moment it starts to drain (`not_serving()`),
so readiness fails at once while requests in flight finish.

Example::

    health = Health()
    server.add_generic_rpc_handlers((health.handler(),))
    await server.start()
    health.serving()
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from grpc import aio

from mesh.gen import health_pb2 as hpb

SERVICE = "grpc.health.v1.Health"
_Status = hpb.HealthCheckResponse.ServingStatus


class Health:
    def __init__(self, services: tuple[str, ...] = ()) -> None:
        # "" is the server as a whole; other names are the services it serves.
        self._names = {"", *services}
        self._status: int = hpb.HealthCheckResponse.NOT_SERVING
        self._notifying: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()  # binds to the loop at first use

    @property
    def is_serving(self) -> bool:
        return self._status == hpb.HealthCheckResponse.SERVING

    def serving(self) -> None:
        self._set(hpb.HealthCheckResponse.SERVING)

    def not_serving(self) -> None:
        self._set(hpb.HealthCheckResponse.NOT_SERVING)

    def _set(self, status: int) -> None:
        if status == self._status:
            return
        self._status = status
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet: no watcher either
        self._notifying = loop.create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _status_of(self, service: str) -> int:
        return self._status if service in self._names else hpb.HealthCheckResponse.SERVICE_UNKNOWN

    async def check(
        self, request: hpb.HealthCheckRequest, context: aio.ServicerContext[object, object]
    ) -> hpb.HealthCheckResponse:
        if request.service not in self._names:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return hpb.HealthCheckResponse(status=self._status)  # type: ignore[arg-type]

    async def watch(
        self, request: hpb.HealthCheckRequest, context: aio.ServicerContext[object, object]
    ) -> AsyncIterator[hpb.HealthCheckResponse]:
        last = None
        while True:
            status = self._status_of(request.service)
            if status != last:
                yield hpb.HealthCheckResponse(status=status)  # type: ignore[arg-type]
                last = status
            async with self._changed:
                await self._changed.wait()

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Check": grpc.unary_unary_rpc_method_handler(
                    self.check,
                    request_deserializer=hpb.HealthCheckRequest.FromString,
                    response_serializer=hpb.HealthCheckResponse.SerializeToString,
                ),
                "Watch": grpc.unary_stream_rpc_method_handler(
                    self.watch,
                    request_deserializer=hpb.HealthCheckRequest.FromString,
                    response_serializer=hpb.HealthCheckResponse.SerializeToString,
                ),
            },
        )
