"""The one exception tree of mesh: what went wrong, in mesh's words, with no transport in it.

    MeshError                      something mesh raised on purpose, or a peer's failure
    ├── InvalidRequest             bad tensor, shape, datatype, size or option
    │   ├── UnsafePath             a model id, storage path or archive member that could
    │   │                          write outside the puller's cache
    │   └── InvalidIdentifier      a model id or storage path that breaks the one rule (mesh.ids)
    ├── ModelNotFound              no such model here
    │   └── ArtifactNotFound       no such object, prefix or bucket in storage
    ├── ModelLoadFailed            the model's load failed (error in the message)
    ├── ModelNotReady              being unloaded or evicted; retry later
    ├── CapacityExhausted          no room, and nothing can be evicted
    │   └── CacheFull              the puller's disk cache cannot take the artifact
    │       └── ArchiveTooLarge    an archive unpacks past the configured bound
    ├── DeadlineExceeded           a load or a request ran out of time
    ├── Cancelled                  the caller gave up
    ├── Unavailable                the server is draining, or a dependency is down
    │   ├── StoreUnavailable       the cluster store (etcd) cannot be reached
    │   ├── StorageUnavailable     object storage failed, and kept failing on retry
    │   ├── ArtifactChanged        the object changed during every download attempt
    │   └── ConnectFailed          a peer's port could not be reached at all (no call sent)
    ├── Unimplemented              the server does not offer what was asked for
    ├── RuntimeFailure             the framework raised during inference
    ├── StoreError                 the cluster store refused an operation
    │   ├── Compacted              a watch asked for history etcd has compacted
    │   ├── LeaseNotFound          the lease expired or was revoked
    │   └── PodIdTaken             another live process holds this pod id
    ├── StorageConfigError         no such storage key, or its entry is invalid
    ├── PermissionDenied           the caller may not do this
    │   └── StorageAccessDenied    object storage refused the credentials
    ├── DataLoss                   bytes were lost or mangled
    │   └── ArtifactCorrupt        size or checksum wrong on every attempt, or an archive
    │                              that cannot be read
    ├── AlreadyExists              what was to be created exists
    ├── Aborted                    the operation lost a race; retry from the start
    ├── OutOfRange                 a value past the end of what there is
    ├── Unauthenticated            no valid credentials were given
    └── UnknownError               a peer failed and said no more

The classes carry no transport status. Each transport maps the tree at its edge, from one
table: gRPC in mesh.grpcstatus (the server's interceptor, mesh.grpcutil.ErrorInterceptor,
answers an error with its status; a component calling another over gRPC turns the status it
gets back into the error), and the REST fronts (mesh.http.app, mesh.llm.openai) answer the
HTTP status derived from the same table. A pod's answer passed on by the router is one of these
errors too, carrying the pod's message unchanged. Third-party errors are translated where they
enter (`raise RuntimeFailure(...) from exc`).

Messages are shown to clients: they name the model and tensor concerned and never carry
credentials. The puller's errors name the storage key and path, never a credential:
third-party messages are scrubbed of every configured secret before they are kept
(mesh.puller.storage).
"""

from __future__ import annotations


class MeshError(Exception):
    """Base of every error mesh raises on purpose."""


class InvalidRequest(MeshError):
    """The request is malformed: a tensor's name, datatype, shape or size, or an option."""


class ModelNotFound(MeshError):
    """No model of that name is registered or available here."""


class ModelLoadFailed(MeshError):
    """Loading the model failed; the message carries the load error."""


class ModelNotReady(MeshError):
    """The model exists but cannot serve right now (being unloaded); a retry may succeed."""


class CapacityExhausted(MeshError):
    """The model does not fit, even after evicting every model that may be evicted."""


class DeadlineExceeded(MeshError):
    """A load or a request ran out of time."""


class Unavailable(MeshError):
    """The server is draining, or something it depends on is unreachable."""


class Unimplemented(MeshError):
    """The server does not offer what was asked for."""


class RuntimeFailure(MeshError):
    """The framework raised while running the model."""


class Cancelled(MeshError):
    """The caller gave up, or the call was cancelled before it finished."""


class PermissionDenied(MeshError):
    """The caller is known but may not do this."""


class DataLoss(MeshError):
    """Bytes were lost or mangled on the way."""


class AlreadyExists(MeshError):
    """What was to be created exists already."""


class Aborted(MeshError):
    """The operation lost a race with another; it may be retried from the start."""


class OutOfRange(MeshError):
    """A value past the end of what there is."""


class Unauthenticated(MeshError):
    """No valid credentials came with the request."""


class UnknownError(MeshError):
    """A peer failed and said no more about it than its message."""


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

    def __init__(self, message: str, compact_revision: int = 0) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision


class LeaseNotFound(StoreError):
    """The lease expired or was revoked: everything attached to it is gone."""


class InvalidIdentifier(InvalidRequest):
    """A model id, vmodel id or storage path that breaks mesh.ids' rule; the message states
    the rule."""


class PodIdTaken(StoreError):
    """Another live process registered this pod id (under a lease of its own)."""


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


class PodUnreachable(Unavailable):
    """No answer came from a pod: it could not be dialled, its connection failed or was lost,
    or it left the mesh. Nothing is known of the model (a load's failure says nothing of it),
    as against an UNAVAILABLE the pod answered (its storage unreachable, say)."""


class ConnectFailed(Unavailable):
    """A peer's listener could not be reached at all (refused, unreachable, or the connect
    timed out), as against a connection lost under a call: nothing of the call was sent."""

    # True when nothing answered (a dropped SYN: a firewall, or a partition), False when the
    # connect was refused or the host unreachable at once.
    timed_out = False


class StorageConfigError(MeshError):
    """The storage configuration has no such key, or that key's entry is invalid."""


class StorageAccessDenied(PermissionDenied):
    """Object storage refused the configured credentials (wrong, expired or not allowed)."""


class ArtifactCorrupt(DataLoss):
    """The downloaded bytes did not match the store's size or checksum on any attempt, or an
    archive could not be read."""
