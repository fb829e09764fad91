"""StorageRef to and from its protobuf message, and the deprecated fields that still spell it.

Every gRPC edge that carries a storage reference converts here: the management API
(RegisterModelRequest, ModelStatusResponse), the pod's LoadModel, the puller's Pull, and their
clients. A request from an older client has no `storage` message; it names the storage in
`storage_key`, `storage_path` (PullRequest: `path`) and puller options, either by name
(PullRequest.options) or as runtime options named `storage.*` (RegisterModel's
runtime_options, LoadModelRequest.options). `from_request` reads either shape, and returns
the runtime options without the puller's.

How it fails: InvalidRequest (INVALID_ARGUMENT) for an unknown option or unpack value, and for a
request giving `storage` beside deprecated fields that say otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping

from mesh.errors import InvalidRequest
from mesh.gen import storage_pb2 as spb
from mesh.storageref import LEGACY_PREFIX, StorageRef, Unpack, split_legacy_options

_UNPACK_TO_WIRE = {
    Unpack.AUTO: spb.UNPACK_AUTO,
    Unpack.TRUE: spb.UNPACK_TRUE,
    Unpack.FALSE: spb.UNPACK_FALSE,
}
_UNPACK_FROM_WIRE = {v: k for k, v in _UNPACK_TO_WIRE.items()}


def to_message(ref: StorageRef) -> spb.StorageRef:
    return spb.StorageRef(
        key=ref.key,
        path=ref.path,
        bucket=ref.bucket,
        unpack=_UNPACK_TO_WIRE[ref.unpack],
        sha256=ref.sha256,
    )


def from_message(message: spb.StorageRef) -> StorageRef:
    unpack = _UNPACK_FROM_WIRE.get(message.unpack)
    if unpack is None:
        raise InvalidRequest(f"storage.unpack {message.unpack} is not an Unpack value")
    return StorageRef(
        key=message.key,
        path=message.path,
        bucket=message.bucket,
        unpack=unpack,
        sha256=message.sha256,
    )


def from_request(
    message: spb.StorageRef | None,
    storage_key: str,
    storage_path: str,
    options: Mapping[str, str],
    *,
    prefixed: bool = True,
) -> tuple[StorageRef, dict[str, str]]:
    """The request's storage reference, and its runtime options without the puller's.

    `message`: the request's `storage`, None when it has none. Without it, the reference is
    built from the deprecated fields: `storage_key`, `storage_path`, and the puller's options,
    which are `options` named `storage.*` (`prefixed`) or all of `options` (the puller's own
    PullRequest, which has no runtime options). With it, the deprecated fields must be empty or
    say the same, and no option may be named `storage.*`.
    """
    if message is None:
        if prefixed:
            runtime, pull = split_legacy_options(options)
        else:
            runtime, pull = {}, dict(options)
        return StorageRef.parse(storage_key, storage_path, pull), runtime
    ref = from_message(message)
    if (storage_key and storage_key != ref.key) or (storage_path and storage_path != ref.path):
        raise InvalidRequest(
            f"storage {ref} and the deprecated storage_key/storage_path "
            f"{storage_key or 'default'}:{storage_path} disagree: give storage alone"
        )
    if prefixed:
        legacy = sorted(k for k in options if k.startswith(LEGACY_PREFIX))
    else:
        legacy = sorted(options)
    if legacy:
        raise InvalidRequest(
            f"options {legacy} beside storage: give the puller's options in storage alone"
        )
    return ref, dict(options) if prefixed else {}
