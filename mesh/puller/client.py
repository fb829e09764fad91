"""A typed asyncio client of the puller, for the pod (mesh.pod.dataplane.ArtifactSource).

    async with PullerClient("unix:/run/mesh/puller.sock") as puller:
        local = await puller.pull("mnist", StorageRef("s3", "models/mnist.onnx"))  # a local path
        ...
        await puller.release("mnist")

`pull` and `release` have exactly the shape the pod's ArtifactSource asks for; `fetch` returns
the whole PullResult (size, cache hit, seconds) and `status` what the cache holds.

How it fails: a gRPC status becomes the mesh error of the same code, with the puller's message
(it names the model, storage key and path), so a pod that lets it through answers its own
client with the same status: NOT_FOUND ArtifactNotFound, RESOURCE_EXHAUSTED CacheFull,
PERMISSION_DENIED StorageAccessDenied, FAILED_PRECONDITION StorageConfigError, DATA_LOSS
ArtifactCorrupt, INVALID_ARGUMENT InvalidRequest, DEADLINE_EXCEEDED DeadlineExceeded,
UNAVAILABLE Unavailable (the puller is down, or storage is). No channel is opened before the
first call.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from grpc import aio

from mesh.errors import (
    ArtifactCorrupt,
    ArtifactNotFound,
    CacheFull,
    DeadlineExceeded,
    InvalidRequest,
    MeshError,
    StorageAccessDenied,
    StorageConfigError,
    Unavailable,
)
from mesh.gen import puller_pb2 as ppb
from mesh.grpcstatus import code_of
from mesh.puller.records import PULLER_SERVICE, ArtifactView, CacheView, PullResult
from mesh.storageref import StorageRef
from mesh.storagewire import to_message

# The puller's errors, by the code each is answered with (mesh.grpcstatus's table); any other
# code is a plain MeshError (INTERNAL).
_ERRORS: tuple[type[MeshError], ...] = (
    InvalidRequest,
    ArtifactNotFound,
    CacheFull,
    StorageAccessDenied,
    StorageConfigError,
    ArtifactCorrupt,
    DeadlineExceeded,
    Unavailable,
)


def error_from_status(exc: aio.AioRpcError, target: str) -> MeshError:
    cls = next((c for c in _ERRORS if code_of(c) is exc.code()), MeshError)
    details = exc.details() or exc.code().name
    if exc.code() is grpc.StatusCode.UNAVAILABLE and "storage" not in details:
        details = f"the puller at {target} is unavailable: {details}"
    return cls(details)


class PullerClient:
    """The puller at `target`: "unix:/path/to.sock", "host:port" or any gRPC target.

    `timeout` bounds each call in seconds (None: no deadline); a pull of a large model from a
    slow store needs a generous one.
    """

    def __init__(self, target: str, *, timeout: float | None = 600.0) -> None:
        self.target = target
        self.timeout = timeout
        self._channel: aio.Channel | None = None
        self._calls: dict[str, Any] = {}

    def _call(self, method: str, request_type: Any, response_type: Any) -> Any:
        if self._channel is None:
            self._channel = aio.insecure_channel(self.target)
        call = self._calls.get(method)
        if call is None:
            call = self._channel.unary_unary(
                f"/{PULLER_SERVICE}/{method}",
                request_serializer=request_type.SerializeToString,
                response_deserializer=response_type.FromString,
            )
            self._calls[method] = call
        return call

    async def _invoke(self, method: str, request: Any, response_type: Any) -> Any:
        call = self._call(method, type(request), response_type)
        try:
            return await call(request, timeout=self.timeout)
        except aio.AioRpcError as exc:
            raise error_from_status(exc, self.target) from exc

    async def fetch(self, model_id: str, storage: StorageRef) -> PullResult:
        """Pull, returning everything the puller says about it."""
        request = ppb.PullRequest(model_id=model_id, storage=to_message(storage))
        response = await self._invoke("Pull", request, ppb.PullResponse)
        return PullResult(
            model_id=response.model_id,
            local_path=Path(response.local_path),
            size=response.size_bytes,
            cache_hit=response.cache_hit,
            seconds=response.seconds,
        )

    async def pull(self, model_id: str, storage: StorageRef) -> str:
        """Bring the model's artifact onto the shared disk; its local path (file or
        directory). The model holds it until `release`."""
        return str((await self.fetch(model_id, storage)).local_path)

    async def release(self, model_id: str) -> None:
        """The model no longer needs its artifact."""
        await self.release_held(model_id)

    async def release_held(self, model_id: str) -> bool:
        """Release; False when the model held nothing."""
        response = await self._invoke(
            "Release", ppb.ReleaseRequest(model_id=model_id), ppb.ReleaseResponse
        )
        return bool(response.was_held)

    async def status(self) -> CacheView:
        r = await self._invoke("CacheStatus", ppb.CacheStatusRequest(), ppb.CacheStatusResponse)
        return CacheView(
            capacity=r.capacity_bytes,
            used=r.used_bytes,
            reserved=r.reserved_bytes,
            in_use=r.in_use_bytes,
            artifacts=tuple(
                ArtifactView(
                    storage_key=a.storage_key,
                    source=a.source,
                    local_path=Path(a.local_path),
                    size=a.size_bytes,
                    models=tuple(a.model_ids),
                    last_used=a.last_used,
                )
                for a in r.artifacts
            ),
        )

    async def aclose(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            self._calls.clear()
            await channel.close()

    async def __aenter__(self) -> PullerClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
