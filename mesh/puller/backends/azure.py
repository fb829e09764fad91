"""Azure Blob Storage, through obstore.

Entry fields, as in ModelMesh: `account_name`, `container` (a pull's `bucket` option names
another container), and one way to authenticate: `connection_string` (AccountKey or
SharedAccessSignature; BlobEndpoint and UseDevelopmentStorage for Azurite), or a service
principal (`client_id`, `client_secret`, `tenant_id`), or none for anonymous reads.

How it fails: a missing account or container raises StorageConfigError naming the field;
everything else as mesh.puller.backends._obstore translates it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from obstore.store import AzureStore

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
    from obstore.store import AzureConfig


def parse_connection_string(entry: StorageEntry, text: str) -> dict[str, str]:
    """`Key=value;Key=value` pairs; errors name the entry, never a value."""
    parts: dict[str, str] = {}
    for item in text.split(";"):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise StorageConfigError(
                f"storage {entry.name!r} (azure): 'connection_string' is not Key=value;..."
            )
        parts[key.strip()] = value.strip()
    return parts


def open_fetcher(entry: StorageEntry, bucket: str | None, policy: ClientPolicy) -> ObstoreFetcher:
    container = bucket or entry.string("container")
    if not container:
        raise StorageConfigError(
            f"storage {entry.name!r} (azure) names no container: give 'container' in the entry "
            "or the pull's 'bucket' option"
        )
    conn = entry.string("connection_string")
    parts = parse_connection_string(entry, conn) if conn else {}
    account = entry.string("account_name") or parts.get("AccountName")
    emulator = parts.get("UseDevelopmentStorage", "").lower() == "true"
    if not account and not emulator:
        raise StorageConfigError(f"storage {entry.name!r} (azure) needs the field 'account_name'")
    config: AzureConfig = {}
    if account:
        config["account_name"] = account
    if emulator:
        config["use_emulator"] = True
    endpoint = parts.get("BlobEndpoint")
    if endpoint:
        config["endpoint"] = endpoint
    if parts.get("AccountKey"):
        config["account_key"] = parts["AccountKey"]
    elif parts.get("SharedAccessSignature"):
        config["sas_key"] = parts["SharedAccessSignature"]
    elif entry.string("client_secret"):
        config["client_id"] = entry.string("client_id", required=True) or ""
        config["client_secret"] = entry.string("client_secret") or ""
        config["tenant_id"] = entry.string("tenant_id", required=True) or ""
    elif not emulator:
        config["skip_signature"] = True
    options = client_options(
        policy,
        allow_http=emulator or bool(endpoint and endpoint.startswith("http://")),
        certificate=entry.string("certificate"),
    )
    try:
        store = AzureStore(
            container,
            config=config,
            client_options=options,
            retry_config=retry_config(),  # type: ignore[arg-type]
        )
    except Exception as exc:
        raise config_error(entry, exc) from exc
    return ObstoreFetcher(
        store,
        entry=entry,
        location=f"az://{account or 'devstoreaccount1'}/{container}",
        identity=f"azure|{endpoint or ''}|{account}|{container}",
        kind="azure",
        md5_etags=False,  # Azure ETags are opaque versions, not digests
        can_list=True,
        policy=policy,
    )
