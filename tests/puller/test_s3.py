"""S3 through moto's server: objects, prefixes, ranges, archives, one download for many pulls,
and the failures a user sees (missing object or bucket, wrong credentials)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from mesh.errors import MeshError, StorageAccessDenied, UnsafePath
from mesh.storageref import StorageRef, Unpack
from tests.puller.conftest import Rig, every_log_line
from tests.puller.servers import MotoServer

WRONG_SECRET = "wrong-SECRET-4f8a1c77e2b94d0a9c31"


def s3_entry(moto: MotoServer, bucket: str, **extra: str) -> dict[str, Any]:
    return {
        "type": "s3",
        "access_key_id": "testing",
        "secret_access_key": "testing",
        "endpoint_url": moto.url,
        "region": "us-east-1",
        "bucket": bucket,
        **extra,
    }


async def test_a_single_object_in_ranges_verified_then_a_hit(
    moto: MotoServer, bucket: str, make_rig: Callable[..., Rig]
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    moto.client().put_object(Bucket=bucket, Key="models/m/model.onnx", Body=data)
    rig = make_rig({"default": s3_entry(moto, bucket)}, range_size=512 << 10)
    result = await rig.puller.pull("m", StorageRef("", "models/m/model.onnx"))
    assert not result.cache_hit
    assert result.local_path.name == "model.onnx"
    assert result.size == len(data)
    assert hashlib.sha256(result.local_path.read_bytes()).digest() == hashlib.sha256(data).digest()
    again = await rig.puller.pull("m2", StorageRef("default", "models/m/model.onnx"))
    assert again.cache_hit and again.local_path == result.local_path
    assert rig.metric("mesh_puller_downloaded_bytes_total", type="s3") == len(data)
    assert rig.metric("mesh_puller_cache_hits_total") == 1
    assert rig.metric("mesh_puller_cache_misses_total") == 1
    assert rig.metric("mesh_puller_download_seconds_count", type="s3") == 1


async def test_a_prefix_becomes_a_directory(
    moto: MotoServer, bucket: str, make_rig: Callable[..., Rig]
) -> None:
    s3 = moto.client()
    s3.put_object(Bucket=bucket, Key="models/mlp/model.onnx", Body=b"o" * 1000)
    s3.put_object(Bucket=bucket, Key="models/mlp/mesh.json", Body=b"{}")
    s3.put_object(Bucket=bucket, Key="models/mlp/extra/vocab.txt", Body=b"v" * 10)
    s3.put_object(Bucket=bucket, Key="models/mlp-other/x", Body=b"not under the prefix")
    rig = make_rig({"default": s3_entry(moto, bucket)})
    result = await rig.puller.pull("mlp", StorageRef("", "models/mlp"))
    found = sorted(
        p.relative_to(result.local_path).as_posix() for p in result.local_path.rglob("*")
    )
    assert found == ["extra", "extra/vocab.txt", "mesh.json", "model.onnx"]
    assert result.size == 1012
    assert (
        await rig.puller.pull("mlp2", StorageRef("", "models/mlp/"))
    ).size == 1012  # prefix only


async def test_an_archive_is_unpacked(
    moto: MotoServer, bucket: str, make_rig: Callable[..., Rig]
) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in (("mlp/model.onnx", b"x" * 5000), ("mlp/mesh.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    moto.client().put_object(Bucket=bucket, Key="mlp.tar.gz", Body=buffer.getvalue())
    rig = make_rig({"default": s3_entry(moto, bucket)})
    result = await rig.puller.pull("mlp", StorageRef("", "mlp.tar.gz"))
    assert result.local_path.name == "mlp"  # the archive's one top directory
    assert sorted(p.name for p in result.local_path.iterdir()) == ["mesh.json", "model.onnx"]
    assert result.size == 5002 == rig.puller.status().used
    kept = await rig.puller.pull("packed", StorageRef("", "mlp.tar.gz", unpack=Unpack.FALSE))
    assert kept.local_path.name == "mlp.tar.gz"


async def test_fifty_concurrent_pulls_make_one_download(
    moto: MotoServer, bucket: str, make_rig: Callable[..., Rig]
) -> None:
    data = os.urandom(2 * 1024 * 1024)
    moto.client().put_object(Bucket=bucket, Key="popular.bin", Body=data)
    rig = make_rig({"default": s3_entry(moto, bucket)})
    results = await asyncio.gather(
        *(rig.puller.pull(f"model-{i}", StorageRef("", "popular.bin")) for i in range(50))
    )
    assert len({r.local_path for r in results}) == 1
    assert rig.metric("mesh_puller_downloaded_bytes_total", type="s3") == len(data)
    assert rig.metric("mesh_puller_cache_misses_total") == 1
    assert rig.metric("mesh_puller_joined_pulls_total") == 49
    assert rig.metric("mesh_puller_download_seconds_count", type="s3") == 1
    (artifact,) = rig.puller.status().artifacts
    assert len(artifact.models) == 50


async def test_missing_objects_buckets_and_unsafe_archives_reach_grpc_clearly(
    moto: MotoServer, bucket: str, serve_puller: Callable[..., Any]
) -> None:
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w:gz") as tar:
        info = tarfile.TarInfo("../../outside.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    moto.client().put_object(Bucket=bucket, Key="evil.tar.gz", Body=evil.getvalue())
    served = await serve_puller(
        {"models": s3_entry(moto, bucket), "gone": s3_entry(moto, "no-such-bucket-here")}
    )
    cases = [
        ("models", "nothing/here", {}, "NOT_FOUND", r"storage 'models': s3://test-\S+/nothing"),
        ("gone", "model.onnx", {}, "NOT_FOUND", "storage 'gone': s3://no-such-bucket-here"),
        ("models", "x", {"bucket": "no-such-bucket-either"}, "NOT_FOUND", "'models'"),
        ("models", "evil.tar.gz", {}, "INVALID_ARGUMENT", "member '../../outside.txt'"),
    ]
    for key, path, options, code, message in cases:
        with pytest.raises(MeshError) as raised:
            await served.client.fetch("m", StorageRef(key, path, **options))
        status = raised.value.__cause__
        assert isinstance(status, grpc.aio.AioRpcError)
        assert status.code() == getattr(grpc.StatusCode, code), status.details()
        assert re.search(message, status.details()), status.details()
    assert (await served.client.status()).used == 0
    assert not list(served.server.settings.cache_dir.parent.rglob("outside.txt"))


async def test_keys_that_climb_out_of_a_prefix_are_refused(
    moto: MotoServer, bucket: str, make_rig: Callable[..., Rig]
) -> None:
    s3 = moto.client()
    s3.put_object(Bucket=bucket, Key="evil/model.onnx", Body=b"ok")
    s3.put_object(Bucket=bucket, Key="evil/../../../escape.txt", Body=b"x")
    rig = make_rig({"default": s3_entry(moto, bucket)})
    with pytest.raises(UnsafePath, match="'default'"):
        await rig.puller.pull("m", StorageRef("", "evil"))
    assert rig.puller.status().used == 0
    assert not any(rig.settings.cache_dir.parent.rglob("escape.txt"))


def iam_user(moto: MotoServer) -> tuple[str, str]:
    """A new IAM user allowed all of S3: its key id and secret."""
    iam = moto.client("iam")
    name = f"puller-{os.urandom(4).hex()}"
    iam.create_user(UserName=name)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    iam.put_user_policy(
        UserName=name,
        PolicyName="s3",
        PolicyDocument='{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", '
        '"Action": "s3:*", "Resource": "*"}]}',
    )
    return key["AccessKeyId"], key["SecretAccessKey"]


async def test_wrong_credentials_are_denied_and_a_fixed_entry_works_without_a_restart(
    moto: MotoServer,
    bucket: str,
    serve_puller: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    moto.client().put_object(Bucket=bucket, Key="m/model.onnx", Body=b"x" * 100_000)
    key_id, secret = await asyncio.to_thread(iam_user, moto)
    caplog.set_level("DEBUG")
    right = s3_entry(moto, bucket, access_key_id=key_id, secret_access_key=secret)
    wrong = s3_entry(moto, bucket, access_key_id=key_id, secret_access_key=WRONG_SECRET)
    served = await serve_puller({"right": right, "wrong": wrong})
    await asyncio.to_thread(moto.require_auth, True)  # moto checks signatures from here on
    try:
        with pytest.raises(StorageAccessDenied) as denied:
            await served.client.fetch("m1", StorageRef("wrong", "m/model.onnx"))
        with pytest.raises(StorageAccessDenied) as listing:  # a prefix: obstore's list path
            await served.client.fetch("m2", StorageRef("wrong", "m/"))
        assert (
            await served.client.fetch("m3", StorageRef("right", "m/model.onnx"))
        ).size == 100_000
        # The secret is fixed in the configuration: the next pull uses it, no restart.
        config = served.server.settings.storage_config
        fixed = config.with_suffix(".new")
        fixed.write_text(
            json.dumps({"right": right, "wrong": {**wrong, "secret_access_key": secret}})
        )
        os.replace(fixed, config)
        assert (
            await served.client.fetch("m4", StorageRef("wrong", "m/model.onnx"))
        ).cache_hit is False
    finally:
        await asyncio.to_thread(moto.require_auth, False)
    for err in (denied.value, listing.value):
        status = err.__cause__
        assert isinstance(status, grpc.aio.AioRpcError)
        assert status.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "storage 'wrong'" in status.details()
        assert "s3://" in status.details()
        # SigV4 never sends the secret and a 403's message does not quote the store's body, so
        # these only guard against a message that starts quoting it (moto's body names the key
        # id). Scrubbing itself is shown by the HTTP echo test, on the same obstore path.
        for credential in (WRONG_SECRET, key_id):
            assert credential not in status.details()
            assert credential not in str(err)
    logged = every_log_line(caplog)
    assert "storage 'wrong'" in logged  # the failures were logged...
    assert WRONG_SECRET not in logged and key_id not in logged  # ...with no credential
    assert served.metric("mesh_puller_failures_total", reason="StorageAccessDenied") == 2
