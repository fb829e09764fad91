"""A model's StorageRef, carried whole from RegisterModel through etcd, the router and the pod
to its puller; and the shapes from before it (loose storage_key/storage_path, the puller's
options as `storage.*` runtime options, records written so) still served."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from mesh.cli import main
from mesh.cluster.codec import Keys
from mesh.cluster.etcd import EtcdConfig, EtcdStore
from mesh.gen import management_pb2 as mpb
from mesh.gen import storage_pb2 as spb
from mesh.storageref import StorageRef, Unpack
from tests.cluster.etcd_server import EtcdServer
from tests.fakes import FakePuller
from tests.helpers import (
    RunningPod,
    RunningRouter,
    infer_request,
    running_pod,
    running_router,
    wait_until,
)

DIGEST = "ab" * 32


@pytest.fixture
def puller(model_dir: Path) -> FakePuller:
    return FakePuller(model_dir)


@pytest.fixture
def pod(etcd: EtcdServer, prefix: str, puller: FakePuller) -> Iterator[RunningPod]:
    with running_pod(
        artifacts=puller, etcd=etcd.url, etcd_prefix=prefix, pod_id="pod-0", lease_ttl=5
    ) as pod:
        yield pod


@pytest.fixture
def router(etcd: EtcdServer, prefix: str, pod: RunningPod) -> Iterator[RunningRouter]:
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        yield router


def _stored(etcd: EtcdServer, prefix: str, model_id: str) -> dict[str, Any]:
    async def get() -> dict[str, Any]:
        store = EtcdStore(EtcdConfig.parse(etcd.url))
        try:
            entry = await store.get(Keys(prefix).model(model_id))
            assert entry is not None
            return dict(json.loads(entry.value))
        finally:
            await store.aclose()

    return asyncio.run(get())


def _put_raw(etcd: EtcdServer, prefix: str, model_id: str, value: dict[str, Any]) -> None:
    async def put() -> None:
        store = EtcdStore(EtcdConfig.parse(etcd.url))
        try:
            data = json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
            await store.put(Keys(prefix).model(model_id), data)
        finally:
            await store.aclose()

    asyncio.run(put())


def _wait_loaded(router: RunningRouter, model_id: str) -> None:
    request = mpb.GetModelStatusRequest(model_id=model_id)
    wait_until(lambda: router.management.GetModelStatus(request).state == "LOADED")


def test_a_registered_storage_ref_reaches_the_puller_whole(
    etcd: EtcdServer, prefix: str, router: RunningRouter, puller: FakePuller
) -> None:
    storage = spb.StorageRef(
        key="s3", path="xgb", bucket="models-b", unpack=spb.UNPACK_FALSE, sha256=DIGEST.upper()
    )
    options = mpb.ModelOptions(runtime_options={"nthread": "1"})
    status = router.management.RegisterModel(
        mpb.RegisterModelRequest(
            model_id="m", format="xgboost", storage=storage, options=options, load_now=True
        )
    )
    ref = StorageRef("s3", "xgb", bucket="models-b", unpack=Unpack.FALSE, sha256=DIGEST)
    assert puller.refs == [ref]  # the digest as registration checked it: lower case
    _wait_loaded(router, "m")
    assert status.storage == spb.StorageRef(
        key="s3", path="xgb", bucket="models-b", unpack=spb.UNPACK_FALSE, sha256=DIGEST
    )
    # An older client reading the status still finds the key and path where it looked.
    assert (status.storage_key, status.storage_path) == ("s3", "xgb")
    assert dict(status.options.runtime_options) == {"nthread": "1"}
    stored = _stored(etcd, prefix, "m")
    assert stored["storage"] == {
        "key": "s3", "path": "xgb", "bucket": "models-b", "unpack": "false", "sha256": DIGEST
    }  # fmt: skip
    assert "storage_key" not in stored and stored["options"] == {"nthread": "1"}


def test_an_old_client_registering_loose_fields_and_storage_options_is_served(
    router: RunningRouter, puller: FakePuller
) -> None:
    options = mpb.ModelOptions(
        runtime_options={"nthread": "1", "storage.bucket": "models-b", "storage.unpack": "false"}
    )
    status = router.management.RegisterModel(
        mpb.RegisterModelRequest(
            model_id="m", format="xgboost", storage_key="s3", storage_path="xgb",
            options=options, load_now=True,
        )
    )  # fmt: skip
    assert puller.refs == [StorageRef("s3", "xgb", bucket="models-b", unpack=Unpack.FALSE)]
    _wait_loaded(router, "m")
    assert (status.storage_key, status.storage_path) == ("s3", "xgb")
    assert status.storage.bucket == "models-b"
    assert dict(status.options.runtime_options) == {"nthread": "1"}  # the runtime's alone


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"storage": spb.StorageRef(path="xgb", sha256="xyz")}, "sha256"),
        ({"storage": spb.StorageRef(path="xgb", bucket="a/b")}, "bucket"),
        ({"storage": spb.StorageRef(path="../xgb")}, "storage path"),
        ({"storage": spb.StorageRef(key="s3")}, "storage path is required"),
        ({"storage": spb.StorageRef(path="xgb"), "storage_path": "other"}, "disagree"),
        ({"storage_path": "xgb", "options": {"runtime_options": {"storage.colour": "red"}}},
         "unknown pull options"),
        ({"storage_path": "xgb", "options": {"runtime_options": {"storage.unpack": "maybe"}}},
         "unpack"),
        ({"storage": spb.StorageRef(path="xgb"),
          "options": {"runtime_options": {"storage.bucket": "b"}}}, "beside storage"),
    ],
    ids=["sha256", "bucket", "path", "no-path", "two-paths", "old-unknown-option",
         "old-bad-unpack", "options-beside-storage"],
)  # fmt: skip
def test_a_bad_storage_is_refused_at_registration(
    router: RunningRouter, puller: FakePuller, fields: dict[str, Any], words: str
) -> None:
    request = mpb.RegisterModelRequest(model_id="m", format="xgboost", **fields)
    with pytest.raises(grpc.RpcError) as raised:
        router.management.RegisterModel(request)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert words in raised.value.details() and "'m'" in raised.value.details()
    assert "m" not in router.server.mirror.models
    batch = router.management.RegisterModels(mpb.RegisterModelsRequest(models=[request]))
    assert batch.results[0].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert puller.refs == []


@pytest.mark.parametrize(
    "spelled",
    [{}, {"storage.unpack": "Auto", "storage.sha256": ""}],
    ids=["as read", "spelled otherwise"],
)
def test_a_record_written_before_storage_ref_loads_and_keeps_its_size(
    etcd: EtcdServer,
    prefix: str,
    router: RunningRouter,
    puller: FakePuller,
    spelled: dict[str, str],
) -> None:
    """Also when its options spell the puller's defaults otherwise than the codec reads them
    (an old router stored them as the client gave them, and the old puller took them)."""
    # As a router from before StorageRef wrote it (mesh.cluster.codec.encode of that record).
    old = {
        "model_id": "old", "format": "xgboost", "storage_key": "s3", "storage_path": "xgb",
        "size_estimate": 0, "measured_size": 0, "measured_sizes": {}, "artifact_bytes": 0,
        "min_copies": 0, "max_copies": 0, "pinned_pods": [], "required_labels": {},
        "preferred_labels": {}, "options": {"nthread": "1", "storage.bucket": "models-b"},
        "registered_at": 1.0, "base": "", "version": 1,
    }  # fmt: skip
    old["options"] = {**old["options"], **spelled}
    _put_raw(etcd, prefix, "old", old)
    mirror = router.server.mirror
    wait_until(lambda: "old" in mirror.models)
    record = mirror.models["old"]
    assert record.storage == StorageRef("s3", "xgb", bucket="models-b")
    assert dict(record.options) == {"nthread": "1"}
    x = np.ones((1, 64), np.float32)
    router.v2.ModelInfer(infer_request("old", input__0=x), timeout=30)
    assert puller.refs == [StorageRef("s3", "xgb", bucket="models-b")]
    # The size a copy measured is written over the record as it was stored, in the new shape.
    wait_until(lambda: mirror.models["old"].measured_size > 0)
    stored = _stored(etcd, prefix, "old")
    assert stored["storage"]["bucket"] == "models-b" and stored["measured_size"] > 0
    assert "storage_key" not in stored and stored["options"] == {"nthread": "1"}


def test_mesh_register_and_status_show_the_storage_with_its_options(
    router: RunningRouter, puller: FakePuller, capsys: pytest.CaptureFixture[str]
) -> None:
    r = ("--router", router.address)
    assert main(["register", "plain", "--format", "xgboost", "--storage-path", "xgb", *r]) == 0
    assert "Storage:      default:xgb\n" in capsys.readouterr().out
    storage = spb.StorageRef(key="s3", path="xgb", bucket="b", unpack=spb.UNPACK_FALSE)
    router.management.RegisterModel(
        mpb.RegisterModelRequest(model_id="opts", format="xgboost", storage=storage)
    )
    assert main(["status", "opts", *r]) == 0
    assert "Storage:      s3:xgb (bucket=b, unpack=false)\n" in capsys.readouterr().out
    assert main(["status", "opts", "-o", "json", *r]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["storage"] == {
        "key": "s3", "path": "xgb", "bucket": "b", "unpack": "UNPACK_FALSE", "sha256": ""
    }  # fmt: skip


def test_mesh_register_takes_the_puller_options_to_the_puller(
    etcd: EtcdServer, prefix: str, router: RunningRouter, puller: FakePuller,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    r = ("--router", router.address)
    code = main([
        "register", "m", "--format", "xgboost", "--storage-key", "s3", "--storage-path", "xgb",
        "--bucket", "models-b", "--unpack", "false", "--sha256", DIGEST.upper(), "--load-now",
        *r,
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert f"Storage:      s3:xgb (bucket=models-b, sha256={DIGEST}, unpack=false)\n" in out, out
    assert puller.refs == [
        StorageRef("s3", "xgb", bucket="models-b", unpack=Unpack.FALSE, sha256=DIGEST)
    ]
    assert _stored(etcd, prefix, "m")["storage"] == {
        "key": "s3", "path": "xgb", "bucket": "models-b", "unpack": "false", "sha256": DIGEST
    }  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--sha256", "xyz"], "--sha256 must be 64 hex digits"),
        (["--sha256", "ab" * 31 + "zz"], "--sha256 must be 64 hex digits"),
        (["--bucket", "a/b"], "--bucket='a/b' is not a bucket name"),
        (["--unpack", "maybe"], "--unpack: invalid choice: 'maybe'"),
        (["--storage-path", "xgb/", "--sha256", DIGEST], "--sha256 applies to a single object"),
        (["--storage-path", "xgb/", "--unpack", "true"], "--unpack=true needs a single object"),
    ],
    ids=["sha256-short", "sha256-not-hex", "bucket", "unpack", "sha256-prefix", "unpack-prefix"],
)
def test_mesh_register_refuses_bad_puller_options_naming_the_flag(
    router: RunningRouter, puller: FakePuller, capsys: pytest.CaptureFixture[str],
    flags: list[str], words: str,
) -> None:  # fmt: skip
    argv = ["register", "m", "--format", "xgboost", "--storage-path", "xgb", *flags,
            "--router", router.address]  # fmt: skip
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own refusal (a choice not offered)
        code = exc.code  # type: ignore[assignment]
    err = capsys.readouterr().err
    assert code == 2
    assert words in err and "mesh register" in err and "Traceback" not in err, err
    assert "m" not in router.server.mirror.models
    assert puller.refs == []


def test_a_prefix_with_a_digest_is_refused_at_registration(
    router: RunningRouter, puller: FakePuller
) -> None:
    # The puller refuses a digest (or unpack=true) for a prefix at every pull: registration
    # says so once, instead of a model that can never load.
    for storage in (spb.StorageRef(path="xgb/", sha256=DIGEST),
                    spb.StorageRef(path="xgb/", unpack=spb.UNPACK_TRUE)):  # fmt: skip
        with pytest.raises(grpc.RpcError) as raised:
            router.management.RegisterModel(
                mpb.RegisterModelRequest(model_id="m", format="xgboost", storage=storage)
            )
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "prefix" in raised.value.details(), raised.value.details()
    assert "m" not in router.server.mirror.models
