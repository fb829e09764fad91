"""The one exception tree of mesh, each class carrying the gRPC status a client sees.

    MeshError             INTERNAL
    ├── InvalidRequest    INVALID_ARGUMENT     bad tensor, shape, datatype, size or option
    │   ├── UnsafePath                         a model id, storage path or archive member
    │   │                                      that could write outside the puller's cache
    │   └── InvalidIdentifier                  a model id or storage path that breaks the
    │                                          one rule (mesh.ids)
    ├── ModelNotFound     NOT_FOUND            no such model here
    │   └── ArtifactNotFound                   no such object, prefix or bucket in storage
    ├── ModelLoadFailed   FAILED_PRECONDITION  the model's load failed (error in the message)
    ├── ModelNotReady     UNAVAILABLE          being unloaded or evicted; retry later
    ├── CapacityExhausted RESOURCE_EXHAUSTED   no room, and nothing can be evicted
    │   └── CacheFull                          the puller's disk cache cannot take the artifact
    │       └── ArchiveTooLarge                an archive unpacks past the configured bound
    ├── DeadlineExceeded  DEADLINE_EXCEEDED    a load or a request ran out of time
    ├── Unavailable       UNAVAILABLE          the server is draining, or a dependency is down
    │   ├── StoreUnavailable                   the cluster store (etcd) cannot be reached
    │   ├── StorageUnavailable                 object storage failed, and kept failing on retry
    │   └── ArtifactChanged                    the object changed during every download attempt
    ├── Unimplemented     UNIMPLEMENTED        the server does not offer what was asked for
    ├── RuntimeFailure    INTERNAL             the framework raised during inference
    ├── StoreError        INTERNAL             the cluster store refused an operation
    │   ├── Compacted     OUT_OF_RANGE         a watch asked for history etcd has compacted
    │   ├── LeaseNotFound FAILED_PRECONDITION  the lease expired or was revoked
    │   └── PodIdTaken    ALREADY_EXISTS       another live process holds this pod id
    ├── StorageConfigError FAILED_PRECONDITION no such storage key, or its entry is invalid
    ├── StorageAccessDenied PERMISSION_DENIED  object storage refused the credentials
    └── ArtifactCorrupt   DATA_LOSS            size or checksum wrong on every attempt, or an
                                               archive that cannot be read

Third-party errors are translated where they enter (`raise RuntimeFailure(...) from exc`); the
gRPC layer maps the tree in one interceptor (mesh.grpcutil.ErrorInterceptor), and the REST front
(mesh.http.app) answers each gRPC code with the HTTP status in `HTTP_STATUS` below, for mesh's
own errors and for a pod's answers passed on alike. Messages are shown
to clients: they name the model and tensor concerned and never carry credentials. The puller's
errors name the storage key and path, never a credential: third-party messages are scrubbed of
every configured secret before they are kept (mesh.puller.storage).
"""

from __future__ import annotations

import grpc

# gRPC code -> HTTP status of the REST front. A client's mistake is a 4xx; "not now" (no pod can
# take it, not loaded, a failed load, draining) is 503; a passed deadline is 504.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 503,
    grpc.StatusCode.FAILED_PRECONDITION: 503,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 503,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status a REST client sees for a gRPC code."""
    return HTTP_STATUS.get(code, 500)


class MeshError(Exception):
    """Base of every error mesh raises on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidRequest(MeshError):
    """The request is malformed: a tensor's name, datatype, shape or size, or an option."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFound(MeshError):
    """No model of that name is registered or available here."""

    code = grpc.StatusCode.NOT_FOUND


class ModelLoadFailed(MeshError):
    """Loading the model failed; the message carries the load error."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ModelNotReady(MeshError):
    """The model exists but cannot serve right now (being unloaded); a retry may succeed."""

    code = grpc.StatusCode.UNAVAILABLE


class CapacityExhausted(MeshError):
    """The model does not fit, even after evicting every model that may be evicted."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(MeshError):
    """A load or a request ran out of time."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(MeshError):
    """The server is draining, or something it depends on is unreachable."""

    code = grpc.StatusCode.UNAVAILABLE


class Unimplemented(MeshError):
    """The server does not offer what was asked for."""

    code = grpc.StatusCode.UNIMPLEMENTED


class RuntimeFailure(MeshError):
    """The framework raised while running the model."""

    code = grpc.StatusCode.INTERNAL


def all_error_classes() -> list[type[MeshError]]:
    """Every class of the tree, the root included."""
    found: list[type[MeshError]] = []
    pending: list[type[MeshError]] = [MeshError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


class StoreUnavailable(Unavailable):
    """The cluster store cannot be reached (connection refused, timed out, no leader)."""


class StoreError(MeshError):
    """The cluster store refused an operation."""


class Compacted(StoreError):
    """A watch or read asked for a revision the store has compacted away."""

    code = grpc.StatusCode.OUT_OF_RANGE

    def __init__(self, message: str, compact_revision: int = 0) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision


class LeaseNotFound(StoreError):
    """The lease expired or was revoked: everything attached to it is gone."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class InvalidIdentifier(InvalidRequest):
    """A model id, vmodel id or storage path that breaks mesh.ids' rule; the message states
    the rule."""


class PodIdTaken(StoreError):
    """Another live process registered this pod id (under a lease of its own)."""

    code = grpc.StatusCode.ALREADY_EXISTS


# The puller's errors (mesh/puller/): each names the storage key and path concerned.


class UnsafePath(InvalidRequest):
    """A model id, storage path or archive member that is absolute, climbs with `..`, or is a
    link: it could make the puller write outside its cache."""


class ArtifactNotFound(ModelNotFound):
    """No object, prefix, bucket or container at that storage path."""


class CacheFull(CapacityExhausted):
    """The puller's disk cache cannot take the artifact: larger than the whole budget, or the
    rest is held by models that are still loaded."""


class ArchiveTooLarge(CacheFull):
    """An archive unpacks to more bytes or members than the configured bound."""


class StorageUnavailable(Unavailable):
    """Object storage failed (unreachable, 5xx, connection cut) and kept failing on retry."""


class ArtifactChanged(Unavailable):
    """The object was replaced while it downloaded, on every attempt."""


class StorageConfigError(MeshError):
    """The storage configuration has no such key, or that key's entry is invalid."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class StorageAccessDenied(MeshError):
    """Object storage refused the configured credentials (wrong, expired or not allowed)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ArtifactCorrupt(MeshError):
    """The downloaded bytes did not match the store's size or checksum on any attempt, or an
    archive could not be read."""

    code = grpc.StatusCode.DATA_LOSS
