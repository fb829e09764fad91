"""A standalone pod's data plane as a v2 backend for the REST front (`mesh pod --rest-port`).

In a mesh the router serves REST and pods need none; a pod serving a directory of models on its
own (`mesh pod --models DIR --rest-port 8008`) answers REST itself, through the same data plane
as its gRPC service. The repository extension: the index lists the directory's models (or, with
no directory, those loaded) with their state here; load loads one from the directory; unload
unloads it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from mesh.errors import DeadlineExceeded, ModelNotFound
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.http.v2 import ModelIndexEntry
from mesh.pod.dataplane import DataPlane
from mesh.pod.wire import message_of, request_of
from mesh.tensors import TensorSpec

T = TypeVar("T")


def _tensors(specs: tuple[TensorSpec, ...]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [
        pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape)
        for s in specs
    ]


class PodBackend:
    """mesh.http.v2.V2Backend over a pod's DataPlane."""

    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane

    def ready(self) -> bool:
        return self._plane.ready()

    async def model_ready(self, name: str, version: str) -> bool:
        return await self._plane.model_ready(name)

    async def model_metadata(
        self, name: str, version: str, timeout: float | None
    ) -> pb.ModelMetadataResponse:
        signature, platform = await self._within(self._plane.model_metadata(name), timeout, name)
        return pb.ModelMetadataResponse(
            name=name,
            platform=platform,
            inputs=_tensors(signature.inputs),
            outputs=_tensors(signature.outputs),
        )

    async def infer(
        self, request: pb.ModelInferRequest, name: str, timeout: float | None
    ) -> pb.ModelInferResponse:
        response = await self._within(self._plane.infer(request_of(request), name), timeout, name)
        return message_of(response)

    async def repository_index(self, ready_only: bool) -> list[ModelIndexEntry]:
        plane = self._plane
        loaded = set(plane.cache.loaded_ids())
        names = set(loaded)
        if plane.repository is not None:
            names.update(plane.repository.names())
        entries = []
        for name in sorted(names):
            if name in loaded:
                entries.append(ModelIndexEntry(name, "READY"))
                continue
            if ready_only:
                continue
            failure = plane.cache.failure(name)
            if plane.cache.source_of(name) is not None:
                entries.append(ModelIndexEntry(name, "LOADING"))
            else:
                reason = failure.error if failure is not None else "not loaded"
                entries.append(ModelIndexEntry(name, "UNAVAILABLE", reason))
        return entries

    async def repository_load(self, name: str, timeout: float | None) -> None:
        plane = self._plane
        if plane.cache.is_loaded(name):
            return
        if plane.repository is None:
            raise ModelNotFound(f"model {name!r}: this pod serves no models directory")
        source = plane.repository.resolve(name)
        await self._within(plane.cache.load(source, retry_failed=True), timeout, name)

    async def repository_unload(self, name: str) -> None:
        if await self._plane.unload(name) is None and not self._known(name):
            raise ModelNotFound(f"model {name!r} is not on this pod")

    def _known(self, name: str) -> bool:
        repository = self._plane.repository
        return repository is not None and name in repository.names()

    @staticmethod
    async def _within(coro: Awaitable[T], timeout: float | None, name: str) -> T:
        if timeout is None:
            return await coro
        try:
            async with asyncio.timeout(timeout):
                return await coro
        except TimeoutError:
            raise DeadlineExceeded(f"model {name!r}: the request's deadline passed") from None
