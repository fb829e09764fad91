"""Google Cloud Storage, through obstore.

Entry fields, as in ModelMesh: `private_key` and `client_email` (a service account; both or
neither, neither meaning anonymous requests), `token_uri`, `private_key_id`, `bucket` (a pull's
`bucket` option wins), and `endpoint_url` for an emulator (fake-gcs-server).

How it fails: a missing bucket or half a service account raises StorageConfigError naming the
field; everything else as mesh.puller.backends._obstore translates it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from obstore.store import GCSStore

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
    from obstore.store import GCSConfig

_TOKEN_URI = "https://oauth2.googleapis.com/token"


def open_fetcher(entry: StorageEntry, bucket: str | None, policy: ClientPolicy) -> ObstoreFetcher:
    bucket = bucket or entry.string("bucket")
    if not bucket:
        raise StorageConfigError(
            f"storage {entry.name!r} (gcs) names no bucket: give 'bucket' in the entry or the "
            "pull's 'bucket' option"
        )
    config: GCSConfig = {}
    private_key, email = entry.string("private_key"), entry.string("client_email")
    if bool(private_key) != bool(email):
        raise StorageConfigError(
            f"storage {entry.name!r} (gcs) needs both 'private_key' and 'client_email', or "
            "neither for anonymous access"
        )
    if private_key and email:
        key = {
            "type": "service_account",
            "private_key": private_key,
            "private_key_id": entry.string("private_key_id") or "",
            "client_email": email,
            "token_uri": entry.string("token_uri") or _TOKEN_URI,
        }
        config["service_account_key"] = json.dumps(key)
    else:
        config["skip_signature"] = True
    endpoint = entry.string("endpoint_url")
    if endpoint:
        config["base_url"] = endpoint
    options = client_options(
        policy,
        allow_http=bool(endpoint and endpoint.startswith("http://")),
        certificate=entry.string("certificate"),
    )
    try:
        store = GCSStore(
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
        location=f"gs://{bucket}",
        identity=f"gcs|{endpoint or 'google'}|{bucket}",
        kind="gcs",
        # GCS ETags are not content MD5s through every API: verify by size only.
        md5_etags=False,
        can_list=True,
        policy=policy,
    )
