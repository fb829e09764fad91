"""Where a model's files are: one storage reference, carried whole from registration to Pull.

A `StorageRef` names an entry of the puller's storage configuration (`key`; empty: "default"),
the object or prefix inside it (`path`; a trailing '/' asks for a prefix only), and the
puller's options, typed: `bucket` (another bucket, or Azure container, than the entry's; empty:
the entry's), `unpack` (AUTO: .tar, .tar.gz, .tgz and .zip objects are unpacked; TRUE: the
object must be an archive; FALSE: kept as it is) and `sha256` (the hex digest a single object
must have; empty: not checked). The management API, the model record in etcd, the router's
LoadModel, the pod's data plane and the puller's Pull all carry this one value.

    ref = check_storage(StorageRef("s3", "fraud/v3/model.onnx", sha256="ab" * 32))
    str(ref)        # 's3:fraud/v3/model.onnx'

`check_storage` is the one validator: registration applies it, so a bad path or option is
refused when the model is registered; the puller applies it again to what it is sent.
`StorageRef.parse` reads the options from strings (a Predictor's `storage.parameters`, the
deprecated `storage.*` runtime options and PullRequest.options).

How it fails: InvalidRequest (INVALID_ARGUMENT) naming the option and what it accepts, or
InvalidIdentifier for a path that breaks the registration rule (mesh.ids). This module imports
no component.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass

from mesh.errors import InvalidRequest
from mesh.ids import check_registered_path

# The puller's options by name, as strings name them (PullRequest.options, storage.parameters).
PULL_OPTIONS = ("bucket", "unpack", "sha256")
# The deprecated spelling of the puller's options among a model's runtime options.
LEGACY_PREFIX = "storage."
DEFAULT_KEY = "default"
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


class Unpack(enum.StrEnum):
    AUTO = "auto"
    TRUE = "true"
    FALSE = "false"


@dataclass(frozen=True, slots=True)
class StorageRef:
    """A model's files in storage (see the module docstring). Built unchecked; check it with
    `check_storage` where it enters."""

    key: str = ""
    path: str = ""
    bucket: str = ""
    unpack: Unpack = Unpack.AUTO
    sha256: str = ""

    @property
    def entry(self) -> str:
        """The storage entry's name: `key`, or "default"."""
        return self.key or DEFAULT_KEY

    def __str__(self) -> str:
        return f"{self.entry}:{self.path}"

    def options(self) -> dict[str, str]:
        """The puller's options that differ from their defaults, as strings."""
        out = {"bucket": self.bucket, "sha256": self.sha256}
        if self.unpack is not Unpack.AUTO:
            out["unpack"] = self.unpack.value
        return {k: v for k, v in out.items() if v}

    @classmethod
    def parse(cls, key: str, path: str, options: Mapping[str, str]) -> StorageRef:
        """A reference with its options read from strings; unknown options are refused.

        >>> StorageRef.parse("s3", "m.tar", {"unpack": "FALSE"}).unpack
        <Unpack.FALSE: 'false'>
        """
        unknown = sorted(set(options) - set(PULL_OPTIONS))
        if unknown:
            raise InvalidRequest(
                f"unknown pull options {unknown} (known: {', '.join(PULL_OPTIONS)})"
            )
        unpack = options.get("unpack", "auto").lower() or "auto"
        if unpack not in Unpack.__members__.values():
            raise InvalidRequest(f"option unpack={unpack!r}: give auto, true or false")
        ref = cls(
            key=key,
            path=path,
            bucket=options.get("bucket", ""),
            unpack=Unpack(unpack),
            sha256=options.get("sha256", ""),
        )
        return check_options(ref)


def check_options(ref: StorageRef) -> StorageRef:
    """`ref` with its options checked (the digest in lower case); the path is not looked at."""
    if ref.bucket and ("/" in ref.bucket or not ref.bucket.isprintable()):
        raise InvalidRequest(f"option bucket={ref.bucket!r} is not a bucket name")
    if not isinstance(ref.unpack, Unpack):
        raise InvalidRequest(f"option unpack={ref.unpack!r}: give auto, true or false")
    if ref.sha256 and not _SHA256.fullmatch(ref.sha256):
        raise InvalidRequest("option sha256 must be 64 hex digits")
    if ref.sha256 != ref.sha256.lower():
        return StorageRef(ref.key, ref.path, ref.bucket, ref.unpack, ref.sha256.lower())
    return ref


def check_storage(ref: StorageRef, what: str = "storage") -> StorageRef:
    """The one validator: `ref` as registration accepts it, or the error that refuses it.

    The path follows mesh.ids.check_registered_path (relative, '/'-separated, no empty, '.'
    or '..' segment); the options follow `check_options`, and a prefix (a path ending in '/')
    takes no sha256 and no unpack=true, as the puller refuses both for it. Messages start
    with `what`.
    """
    if not ref.path:
        raise InvalidRequest(f"{what}: storage path is required")
    check_registered_path(ref.path, f"{what}: storage path")
    try:
        checked = check_options(ref)
    except InvalidRequest as exc:
        raise InvalidRequest(f"{what}: {exc}") from None
    # The puller refuses these for a prefix at every pull: refused once, here, instead.
    if ref.path.endswith("/") and ref.sha256:
        raise InvalidRequest(
            f"{what}: option sha256 applies to a single object, and storage path "
            f"{ref.path!r} names a prefix"
        )
    if ref.path.endswith("/") and ref.unpack is Unpack.TRUE:
        raise InvalidRequest(
            f"{what}: option unpack=true needs a single object (an archive), and storage "
            f"path {ref.path!r} names a prefix"
        )
    return checked


def split_legacy_options(options: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(runtime options, puller options) of a deprecated option map in which the puller's
    options are the ones named `storage.*`."""
    runtime = {k: v for k, v in options.items() if not k.startswith(LEGACY_PREFIX)}
    pull = {
        k.removeprefix(LEGACY_PREFIX): v for k, v in options.items() if k.startswith(LEGACY_PREFIX)
    }
    return runtime, pull
