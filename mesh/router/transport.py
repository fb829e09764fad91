"""What the router needs of a pod, with no transport in it: the pod transport interface.

The router's core (mesh.router.core), its management API and its leader's jobs talk to pods
only through `PodTransport`; mesh.router.grpcpods implements it over gRPC (one channel per pod,
and `mesh serve`'s pod called in process), and mesh.router.pods pools the clients. Every
method raises mesh.errors, never a transport's exception: a pod's answer becomes the error of
its status (mesh.grpcstatus), carrying the pod's message unchanged, so that the router can pass
it on to its own client as it came; a pod that left the mesh during a call (its connection
closed under the call) is `Unavailable`, which the forward retries on another copy.

Requests travel as the client's bytes: the router's hit path decodes no tensor. A forward is
"model id + the request's bytes"; a load is a `LoadRequest`.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from mesh.errors import MeshError
from mesh.storageref import StorageRef

# A pod's inference in this process: (serialized ModelInferRequest, model id) -> serialized
# ModelInferResponse, raising MeshError. A coroutine function: the client runs its first step
# itself (mesh.router.grpcpods.InProcessPodClient).
LocalInfer = Callable[[bytes, str], Coroutine[Any, Any, bytes]]


@dataclass(frozen=True, slots=True)
class LoadRequest:
    """Load `model_id` from `storage` (for the pod's puller), in `format`, with the runtime's
    `options`."""

    model_id: str
    format: str = ""
    storage: StorageRef = field(default_factory=StorageRef)
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Loaded:
    """A load's answer: the bytes the copy takes on the pod, and its files' bytes on disk
    (0: the pod did not say)."""

    size: int
    artifact_bytes: int = 0


class PodStream(Protocol):
    """One streamed request on its way: the pod's responses, as it sends them."""

    async def read(self) -> bytes | None:
        """The next response's bytes; None once the pod has ended the stream."""
        ...

    def cancel(self) -> None:
        """Stop the call (the client went away): the pod stops generating."""
        ...


class PodTransport(Protocol):
    """One pod, as the router calls it. `outstanding` is the router's own count of requests in
    flight to it (mesh.router.pods.PodPool.pick reads it). `address` is the pod's gRPC
    address; `data_address` its frame listener's (mesh.frames), "" where it has none.
    `can_fall_silent`: whether an `infer` can wait on a pod that no longer answers (its
    packets dropped), which the attempt timeout watches for (mesh.router.attempt); not so for
    a pod in this process, whose inference is a call on this event loop."""

    pod_id: str
    address: str
    data_address: str
    outstanding: int
    can_fall_silent: bool

    async def infer(self, data: bytes, model_id: str, timeout: float | None) -> bytes:
        """Forward a serialized ModelInferRequest for `model_id`: the response's bytes."""
        ...

    def stream(self, data: bytes, model_id: str, timeout: float | None) -> PodStream:
        """Forward one ModelStreamInfer request for `model_id`."""
        ...

    def stream_error(self, message: bytes) -> type[MeshError] | None:
        """The class of the error a streamed response reports, or None for a result."""
        ...

    async def metadata(self, data: bytes, timeout: float | None) -> bytes:
        """A serialized ModelMetadataRequest in, the pod's serialized answer out."""
        ...

    async def load(self, request: LoadRequest, timeout: float) -> Loaded:
        """Load a copy; the bytes it takes on the pod and its files'. An error's message starts
        with the status the pod answered (`FAILED_PRECONDITION: ...`), for the load's failure
        record."""
        ...

    async def unload(self, model_id: str, timeout: float) -> None:
        """Unload the copy, if the pod holds one."""
        ...

    async def live(self, timeout: float) -> None:
        """Return once the pod answers that it is there (ServerLive), whatever it answers;
        DeadlineExceeded or Unavailable when it does not (mesh.router.attempt)."""
        ...

    async def aclose(self) -> None: ...


class Connect(Protocol):
    """How the pool reaches a pod: a transport to `address` (and to `data_address`, the pod's
    frame listener, when it advertises one), or to `local` when the pod runs in this process
    (`mesh serve`)."""

    def __call__(
        self, pod_id: str, address: str, local: LocalInfer | None, data_address: str = ""
    ) -> PodTransport: ...
