"""The one status table: mesh's exception tree (mesh.errors) against gRPC's status codes, both
ways, and the HTTP status of each code for the REST fronts.

- Server side: `status_of(exc)` is the code an error is answered with. The error interceptor
  (mesh.grpcutil.ErrorInterceptor) aborts every call with it; an error of a class the table
  does not list takes its nearest listed ancestor's code (MeshError itself is INTERNAL).
- Client side: `error_from_status(code, details)` is the error a component raises when another
  answered it with `code`: the first class the table lists for that code, carrying the peer's
  message unchanged. Every code but OK has a class, and the class answers with the code it came
  from, so an error passed on (a pod's answer, through the router) reaches its client as it was.
- REST: `http_status(code)` and `http_status_of(exc)`; a client's mistake is a 4xx, "not now"
  (no pod can take it, not loaded, a failed load, draining) is 503, a passed deadline is 504.

Only the edges import this module: the gRPC servers and clients, and the HTTP fronts. The
router's core and the pod's data plane raise and catch mesh.errors alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from mesh import errors as e

Code = grpc.StatusCode

# (class, code), most general meaning first for each code: the first class listed with a code
# is what that code becomes on the client side.
STATUS_TABLE: tuple[tuple[type[e.MeshError], grpc.StatusCode], ...] = (
    (e.MeshError, Code.INTERNAL),
    (e.InvalidRequest, Code.INVALID_ARGUMENT),
    (e.UnsafePath, Code.INVALID_ARGUMENT),
    (e.InvalidIdentifier, Code.INVALID_ARGUMENT),
    (e.ModelNotFound, Code.NOT_FOUND),
    (e.ArtifactNotFound, Code.NOT_FOUND),
    (e.ModelLoadFailed, Code.FAILED_PRECONDITION),
    (e.Unavailable, Code.UNAVAILABLE),
    (e.ModelNotReady, Code.UNAVAILABLE),
    (e.StoreUnavailable, Code.UNAVAILABLE),
    (e.StorageUnavailable, Code.UNAVAILABLE),
    (e.ArtifactChanged, Code.UNAVAILABLE),
    (e.ConnectFailed, Code.UNAVAILABLE),
    (e.PodUnreachable, Code.UNAVAILABLE),
    (e.CapacityExhausted, Code.RESOURCE_EXHAUSTED),
    (e.CacheFull, Code.RESOURCE_EXHAUSTED),
    (e.ArchiveTooLarge, Code.RESOURCE_EXHAUSTED),
    (e.DeadlineExceeded, Code.DEADLINE_EXCEEDED),
    (e.Cancelled, Code.CANCELLED),
    (e.Unimplemented, Code.UNIMPLEMENTED),
    (e.RuntimeFailure, Code.INTERNAL),
    (e.StoreError, Code.INTERNAL),
    (e.OutOfRange, Code.OUT_OF_RANGE),
    (e.Compacted, Code.OUT_OF_RANGE),
    (e.LeaseNotFound, Code.FAILED_PRECONDITION),
    (e.AlreadyExists, Code.ALREADY_EXISTS),
    (e.PodIdTaken, Code.ALREADY_EXISTS),
    (e.StorageConfigError, Code.FAILED_PRECONDITION),
    (e.PermissionDenied, Code.PERMISSION_DENIED),
    (e.StorageAccessDenied, Code.PERMISSION_DENIED),
    (e.DataLoss, Code.DATA_LOSS),
    (e.ArtifactCorrupt, Code.DATA_LOSS),
    (e.Aborted, Code.ABORTED),
    (e.Unauthenticated, Code.UNAUTHENTICATED),
    (e.UnknownError, Code.UNKNOWN),
)

# gRPC code -> HTTP status of the REST fronts. "Too much now" (no room, too many requests held
# for a pod to start) is 429, as on the OpenAI routes; "not now" is 503.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 503,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 503,
    Code.UNAUTHENTICATED: 401,
}

_CODE: dict[type[BaseException], grpc.StatusCode] = dict(STATUS_TABLE)
_ERROR: dict[grpc.StatusCode, type[e.MeshError]] = {}
for _cls, _code in STATUS_TABLE:
    _ERROR.setdefault(_code, _cls)
_BY_NAME: dict[str, type[e.MeshError]] = {code.name: cls for code, cls in _ERROR.items()}


def code_of(cls: type[e.MeshError]) -> grpc.StatusCode:
    """The code errors of class `cls` are answered with."""
    code = _CODE.get(cls)
    if code is None:
        code = next(_CODE[c] for c in cls.__mro__ if c in _CODE)
        _CODE[cls] = code
    return code


def status_of(exc: BaseException) -> grpc.StatusCode:
    """The code an exception is answered with: its class's for a MeshError, else INTERNAL."""
    return code_of(type(exc)) if isinstance(exc, e.MeshError) else Code.INTERNAL


def status_name(exc: BaseException) -> str:
    """`status_of(exc)`'s name, as metrics and in-stream errors (`mesh_status`) spell it."""
    return status_of(exc).name


def error_class(
    code: grpc.StatusCode, prefer: Sequence[type[e.MeshError]] = ()
) -> type[e.MeshError]:
    """The class a peer's `code` becomes: the first of `prefer` answered with that code (a
    caller that knows its peer's errors better, such as the puller's client), else the
    table's first class for it (OK, which is no error, becomes UnknownError)."""
    for cls in prefer:
        if code_of(cls) is code:
            return cls
    return _ERROR.get(code, e.UnknownError)


def error_from_status(
    code: grpc.StatusCode, details: str, prefer: Sequence[type[e.MeshError]] = ()
) -> e.MeshError:
    """The error to raise for a peer's answer `code` with message `details`."""
    return error_class(code, prefer)(details)


def error_class_named(name: str) -> type[e.MeshError]:
    """The class for a status named in a message (`mesh_status`); UnknownError if none."""
    return _BY_NAME.get(name, e.UnknownError)


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status a REST client sees for a gRPC code."""
    return HTTP_STATUS.get(code, 500)


def http_status_of(exc: BaseException) -> int:
    """The HTTP status a REST client sees for an exception (500 for one not of mesh's)."""
    return http_status(status_of(exc))
