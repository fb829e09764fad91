"""S3 and S3-compatible stores (MinIO, Ceph, IBM COS, R2), through obstore.

Entry fields, as in ModelMesh: `access_key_id`, `secret_access_key` (both or neither; neither
means anonymous requests), `endpoint_url` (any S3-compatible endpoint; path-style requests),
`region` (default us-east-1), `bucket` (or `default_bucket`; a pull's `bucket` option wins),
`certificate` (a PEM CA to trust for the endpoint's TLS). ETags of 32 hex digits are the
content's MD5 and are verified.

How it fails: a missing bucket or incomplete credentials raise StorageConfigError naming the
field; everything else as mesh.puller.backends._obstore translates it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from obstore.store import S3Store

from mesh.errors import StorageConfigError
from mesh.puller.backends._obstore import (
    ObstoreFetcher,
    client_options,
    config_error,
    retry_config,
)
from mesh.puller.fetcher import ClientPolicy
from mesh.puller.storage import StorageEntry

if TYPE_CHECKING:
    from obstore.store import S3Config


def open_fetcher(entry: StorageEntry, bucket: str | None, policy: ClientPolicy) -> ObstoreFetcher:
    bucket = bucket or entry.string("bucket") or entry.string("default_bucket")
    if not bucket:
        raise StorageConfigError(
            f"storage {entry.name!r} (s3) names no bucket: give 'bucket' in the entry or the "
            "pull's 'bucket' option"
        )
    endpoint = entry.string("endpoint_url")
    config: S3Config = {"region": entry.string("region") or "us-east-1"}
    if endpoint:
        config["endpoint"] = endpoint
        config["virtual_hosted_style_request"] = False
    key_id, secret = entry.string("access_key_id"), entry.string("secret_access_key")
    if bool(key_id) != bool(secret):
        raise StorageConfigError(
            f"storage {entry.name!r} (s3) needs both 'access_key_id' and 'secret_access_key', "
            "or neither for anonymous access"
        )
    if key_id and secret:
        config["access_key_id"] = key_id
        config["secret_access_key"] = secret
        token = entry.string("session_token")
        if token:
            config["session_token"] = token
    else:
        config["skip_signature"] = True
    options = client_options(
        policy,
        allow_http=bool(endpoint and endpoint.startswith("http://")),
        certificate=entry.string("certificate"),
    )
    try:
        store = S3Store(
            bucket,
            config=config,
            client_options=options,
            retry_config=retry_config(),  # type: ignore[arg-type]
        )
    except Exception as exc:
        raise config_error(entry, exc) from exc
    return ObstoreFetcher(
        store,
        entry=entry,
        location=f"s3://{bucket}",
        identity=f"s3|{endpoint or 'aws'}|{bucket}",
        kind="s3",
        md5_etags=True,
        can_list=True,
        policy=policy,
    )
