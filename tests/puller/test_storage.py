"""The storage configuration: ModelMesh's secret layout, reloaded on change, secrets kept."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mesh.errors import StorageConfigError
from mesh.puller.storage import StorageConfigSource, StorageEntry, scrub

SECRET = "s3cr3t-wJalrXUtnFEMI-K7MDENG"


def mount_secret(directory: Path, entries: dict[str, dict[str, object]], generation: int) -> None:
    """Lay entries out as the kubelet mounts a Secret: files behind a swapped ..data link."""
    real = directory / f"..2026_01_01_00_00_0{generation}"
    real.mkdir(parents=True)
    for name, value in entries.items():
        (real / name).write_text(json.dumps(value))
    tmp_link = directory / "..data_tmp"
    tmp_link.symlink_to(real.name)
    os.replace(tmp_link, directory / "..data")
    for name in entries:
        link = directory / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")


def test_a_mounted_secret_is_read_and_changes_apply_without_a_restart(tmp_path: Path) -> None:
    s3 = {"type": "s3", "access_key_id": "AKIA1", "secret_access_key": SECRET, "bucket": "a"}
    mount_secret(tmp_path, {"default": s3, "local": {"type": "file", "root": "/srv"}}, 1)
    source = StorageConfigSource(tmp_path)
    config = source.current()
    assert sorted(config.entries) == ["default", "local"]
    assert config.entry("").fields["bucket"] == "a"  # no key given: "default"
    assert source.current() is config  # unchanged: not parsed again
    mount_secret(tmp_path, {"default": {**s3, "bucket": "b"}, "local": {"type": "pvc"}}, 2)
    assert source.current().entry("default").fields["bucket"] == "b"


def test_one_json_file_with_objects_or_json_strings(tmp_path: Path) -> None:
    path = tmp_path / "storage.json"
    path.write_text(
        json.dumps(
            {
                "web": {"type": "https", "url": "https://models.example.com"},
                "minio": json.dumps({"type": "s3", "bucket": "m"}),
            }
        )
    )
    config = StorageConfigSource(path).current()
    assert config.entry("web").type == "http"
    assert config.entry("minio").type == "s3"


def test_a_bad_entry_is_refused_by_name_and_spoils_no_other(tmp_path: Path) -> None:
    (tmp_path / "good").write_text(json.dumps({"type": "gcs", "bucket": "g"}))
    (tmp_path / "broken").write_text('{"type": "s3", "secret_access_key": "' + SECRET + '"')
    (tmp_path / "odd").write_text(json.dumps({"type": "ftp", "password": SECRET}))
    config = StorageConfigSource(tmp_path).current()
    assert config.entry("good").type == "gcs"
    for key in ("broken", "odd"):
        with pytest.raises(StorageConfigError, match=key) as err:
            config.entry(key)
        assert SECRET not in str(err.value)
    with pytest.raises(StorageConfigError, match="'missing' is not in the storage configuration"):
        config.entry("missing")


def test_entries_show_field_names_never_values() -> None:
    entry = StorageEntry.parse(
        "minio", {"type": "s3", "access_key_id": "AKIA1", "secret_access_key": SECRET}
    )
    assert SECRET not in repr(entry)
    assert SECRET not in str(entry)
    assert SECRET in entry.secrets()


def test_scrub_removes_secrets_url_queries_and_user_info() -> None:
    entry = StorageEntry.parse(
        "az",
        {
            "type": "azure",
            "connection_string": f"AccountName=acct;AccountKey={SECRET};EndpointSuffix=x",
            "headers": {"Authorization": "Bearer tok-123456"},
        },
    )
    text = (
        f"GET https://user:pw@acct.blob.core.windows.net/c/m?sig=abc%2F&se=1 failed; "
        f"key {SECRET}; header Bearer tok-123456"
    )
    clean = scrub(text, entry.secrets())
    assert SECRET not in clean
    assert "tok-123456" not in clean
    assert "sig=abc" not in clean
    assert "user:pw" not in clean
    assert "acct.blob.core.windows.net/c/m" in clean
