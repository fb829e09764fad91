"""One module per storage backend, behind mesh.puller.fetcher.Fetcher.

    s3.py     S3 and compatibles (obstore)      gcs.py    Google Cloud Storage (obstore)
    azure.py  Azure Blob Storage (obstore)      http.py   HTTP(S) servers (obstore)
    files.py  `pvc` and `file`: a mounted directory

`open_fetcher` picks the module by the entry's type. How it fails: StorageConfigError when the
entry cannot make a store (the backend names the field), never with a credential in it.
"""

from __future__ import annotations

from pathlib import Path

from mesh.puller.backends import azure, files, gcs, http, s3
from mesh.puller.fetcher import ClientPolicy, Fetcher
from mesh.puller.storage import StorageEntry

_OBSTORE = {
    "s3": s3.open_fetcher,
    "gcs": gcs.open_fetcher,
    "azure": azure.open_fetcher,
    "http": http.open_fetcher,
}


def open_fetcher(
    entry: StorageEntry, bucket: str | None, policy: ClientPolicy, pvc_root: Path
) -> Fetcher:
    """A fetcher for `entry`; `bucket` overrides the entry's bucket or container."""
    if entry.type in ("pvc", "file"):
        return files.open_fetcher(entry, bucket, policy, pvc_root)
    return _OBSTORE[entry.type](entry, bucket, policy)
