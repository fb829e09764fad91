"""Every storage type builds its client from a ModelMesh-style entry, or says which field is
wrong without showing a value. (S3, HTTP and files are exercised against servers elsewhere.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mesh.errors import StorageConfigError
from mesh.puller.backends import open_fetcher
from mesh.puller.fetcher import ClientPolicy
from mesh.puller.storage import StorageEntry

KEY = "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seQ=="
PEM = "-----BEGIN PRIVATE KEY-----\nNOT-A-KEY-7f3e9a1b\n-----END PRIVATE KEY-----\n"


def fetcher(raw: dict[str, Any], bucket: str | None = None) -> Any:
    return open_fetcher(StorageEntry.parse("k", raw), bucket, ClientPolicy(), Path("/pvc"))


@pytest.mark.parametrize(
    ("raw", "location"),
    [
        ({"type": "s3", "bucket": "b"}, "s3://b"),
        (
            {
                "type": "s3",
                "default_bucket": "b",
                "access_key_id": "AK",
                "secret_access_key": KEY,
                "endpoint_url": "https://minio.example.com",
                "region": "eu-1",
            },
            "s3://b",
        ),
        ({"type": "gcs", "bucket": "g"}, "gs://g"),
        (
            {
                "type": "azure",
                "account_name": "acct",
                "container": "c",
                "connection_string": f"AccountName=acct;AccountKey={KEY};EndpointSuffix=core.windows.net",
            },
            "az://acct/c",
        ),
        (
            {"type": "azure", "container": "c", "connection_string": "UseDevelopmentStorage=true"},
            "az://devstoreaccount1/c",
        ),
        (
            {
                "type": "azure",
                "account_name": "acct",
                "container": "c",
                "client_id": "id",
                "client_secret": KEY,
                "tenant_id": "t",
            },
            "az://acct/c",
        ),
        (
            {"type": "https", "url": "https://user:pw@models.example.com/base/?sig=abc"},
            "https://models.example.com/base",
        ),
    ],
    ids=["s3-anonymous", "s3-keys", "gcs-anonymous", "azure-key", "azurite", "azure-sp", "https"],
)
def test_entries_build_fetchers_named_without_credentials(
    raw: dict[str, Any], location: str
) -> None:
    built = fetcher(raw)
    assert built.location == location
    for text in (built.location, built.identity):
        assert KEY not in text and "pw" not in text and "sig=" not in text


def test_a_pull_may_name_another_bucket() -> None:
    assert fetcher({"type": "s3", "bucket": "a"}, bucket="other").location == "s3://other"
    assert fetcher({"type": "azure", "account_name": "x", "container": "a"}, "c2").location == (
        "az://x/c2"
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"type": "s3"}, "names no bucket"),
        ({"type": "s3", "bucket": "b", "access_key_id": "AK"}, "needs both"),
        ({"type": "gcs", "bucket": "b", "private_key": PEM}, "needs both"),
        ({"type": "gcs", "bucket": "b", "private_key": PEM, "client_email": "a@b.c"}, "invalid"),
        ({"type": "azure", "container": "c"}, "account_name"),
        (
            {"type": "azure", "account_name": "a", "container": "c", "connection_string": "junk"},
            "connection_string",
        ),
        ({"type": "http"}, "'url'"),
        ({"type": "http", "url": "ftp://x/y"}, "http"),
        ({"type": "http", "url": "https://x", "client_key": PEM}, "client certificates"),
        ({"type": "pvc"}, "'name'"),
        ({"type": "file", "root": "relative"}, "absolute"),
        ({"type": "s3", "bucket": 5}, "must be a string"),
    ],
)
def test_bad_entries_name_the_field_never_the_value(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(StorageConfigError, match=message) as err:
        fetcher(raw)
    assert "NOT-A-KEY" not in str(err.value)
    assert "storage 'k'" in str(err.value)
