"""HTTP and HTTPS servers, through obstore: the path is appended to the entry's `url`.

Entry fields, as in ModelMesh: `url` (required), `headers` (an object; each value a string or a
list of strings, e.g. an Authorization header: scrubbed like any credential), `certificate`
(a PEM CA). ModelMesh's `client_certificate`/`client_key` (mutual TLS) are refused: obstore's
client has no client certificates. A server that ignores byte ranges still works, one stream
per object. HTTP has no listing: a model on HTTP is one object (or one archive).

How it fails: a missing or non-HTTP `url` raises StorageConfigError; everything else as
mesh.puller.backends._obstore translates it.
"""

from __future__ import annotations

import urllib.parse

from obstore.store import HTTPStore

from mesh.errors import StorageConfigError
from mesh.puller.backends._obstore import (
    ObstoreFetcher,
    client_options,
    config_error,
    retry_config,
)
from mesh.puller.fetcher import ClientPolicy
from mesh.puller.storage import StorageEntry


def open_fetcher(entry: StorageEntry, bucket: str | None, policy: ClientPolicy) -> ObstoreFetcher:
    url = entry.string("url", required=True) or ""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise StorageConfigError(f"storage {entry.name!r} (http): 'url' must be http(s)://host/...")
    if entry.string("client_certificate") or entry.string("client_key"):
        raise StorageConfigError(
            f"storage {entry.name!r} (http): client certificates are not supported"
        )
    if bucket:
        raise StorageConfigError(f"storage {entry.name!r} (http) takes no 'bucket' option")
    options = client_options(
        policy,
        allow_http=parts.scheme == "http",
        certificate=entry.string("certificate"),
        headers=entry.headers(),
    )
    try:
        store = HTTPStore.from_url(
            url,
            client_options=options,
            retry_config=retry_config(),  # type: ignore[arg-type]
        )
    except Exception as exc:
        raise config_error(entry, exc) from exc
    host = parts.hostname or ""
    shown = f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path}"
    return ObstoreFetcher(
        store,
        entry=entry,
        location=shown.rstrip("/"),
        identity=f"http|{shown}",
        kind="http",
        md5_etags=False,  # an HTTP ETag is opaque
        can_list=False,
        policy=policy,
    )
