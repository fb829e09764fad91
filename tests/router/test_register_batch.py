"""RegisterModels: many models in one call, each checked and answered alone, few etcd writes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from mesh.cluster.codec import Keys
from mesh.cluster.store import Put
from mesh.gen import management_pb2 as mpb
from mesh.router.batches import MAX_BATCH, MAX_TXN_BYTES, MAX_TXN_OPS, chunks
from tests.cluster.etcd_server import EtcdServer
from tests.helpers import RunningPod, infer_request, output_array, running_router, wait_until

OK = 0
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]


def _model(model_id: str, path: str = "mlp", **kw) -> mpb.RegisterModelRequest:  # type: ignore[no-untyped-def]
    return mpb.RegisterModelRequest(model_id=model_id, format="onnx", storage_path=path, **kw)


def _revisions(router, prefix: str, ids: list[str]) -> set[int]:  # type: ignore[no-untyped-def]
    """The etcd revisions that wrote these models' records."""
    keys = Keys(prefix)
    store = router.server.store

    async def read() -> set[int]:
        entries = (await store.range(keys.models)).entries
        wanted = {keys.model(m) for m in ids}
        return {e.mod_revision for e in entries if e.key in wanted}

    return router.run(read())


def test_a_batch_registers_each_model_alone_in_few_transactions(
    etcd: EtcdServer, prefix: str
) -> None:
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        good = [f"bulk-{i:04d}" for i in range(300)]
        models = [_model(m) for m in good[:150]]
        models += [
            _model("Bad Id!"),  # not a valid id
            _model("escapes", path="../outside"),  # a storage path leaving its root
            _model("bulk-0003"),  # twice in one batch
            _model("no-base", base="missing"),  # its base is not registered
            _model("adapter", base="bulk-0007"),  # its base is earlier in the same batch
            _model("copies", options=mpb.ModelOptions(min_copies=3, max_copies=1)),
            mpb.RegisterModelRequest(  # batch.* on a generative model would be ignored
                model_id="llm",
                format="transformers",
                storage_path="llama",
                options=mpb.ModelOptions(runtime_options={"batch.max_size": "8"}),
            ),
        ]
        models += [_model(m) for m in good[150:]]
        response = router.management.RegisterModels(mpb.RegisterModelsRequest(models=models))

        assert [r.model_id for r in response.results] == [m.model_id for m in models]
        by_id = {r.model_id: r for r in response.results[150:157]}
        for bad in ("Bad Id!", "escapes", "no-base", "copies", "llm"):
            assert by_id[bad].code == INVALID_ARGUMENT, by_id[bad]
            assert by_id[bad].message and not by_id[bad].HasField("status")
        assert "storage path" in by_id["escapes"].message
        assert "missing" in by_id["no-base"].message
        assert "batch.max_size" in by_id["llm"].message
        duplicate = response.results[152]
        assert duplicate.code == INVALID_ARGUMENT and "twice" in duplicate.message
        assert by_id["adapter"].code == OK and by_id["adapter"].status.model_id == "adapter"
        fine = [r for r in response.results if r.code == OK]
        assert {r.model_id for r in fine} == set(good) | {"adapter"}
        assert all(r.status.state == "NOT_LOADED" for r in fine)

        # Readable from the router as soon as the call returns; the bad ones were not written.
        listed = {m.model_id for m in router.management.ListModels(mpb.ListModelsRequest()).models}
        assert listed == set(good) | {"adapter"}
        status = router.management.GetModelStatus(mpb.GetModelStatusRequest(model_id="bulk-0299"))
        assert status.storage_path == "mlp"
        # 301 records in transactions of at most 128, not one write each (the adapter after
        # its base, once the base is written).
        written = _revisions(router, prefix, [*good, "adapter"])
        assert len(written) == math.ceil(300 / MAX_TXN_OPS) + 1


def test_records_too_large_for_one_transaction_are_split_by_size(
    etcd: EtcdServer, prefix: str
) -> None:
    # 100 records of ~40 KB: under etcd's op limit, over its 1.5 MiB request limit in one txn.
    options = mpb.ModelOptions(runtime_options={"note": "x" * 40_000})
    models = [_model(f"big-{i:03d}", options=options) for i in range(100)]
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        response = router.management.RegisterModels(mpb.RegisterModelsRequest(models=models))
        assert [r.code for r in response.results] == [OK] * 100, response.results[0].message
        listed = router.management.ListModels(mpb.ListModelsRequest()).models
        assert len(listed) == 100
        assert len(_revisions(router, prefix, [m.model_id for m in models])) > 1
        # One record etcd could never take is the client's mistake, in a batch and alone.
        huge = _model("huge", options=mpb.ModelOptions(runtime_options={"n": "x" * 2_000_000}))
        alone = router.management.RegisterModels(mpb.RegisterModelsRequest(models=[huge]))
        assert alone.results[0].code == INVALID_ARGUMENT
        assert "at most" in alone.results[0].message
        with pytest.raises(grpc.RpcError) as err:
            router.management.RegisterModel(huge)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_request_batching_on_a_generative_model_is_refused_at_registration(
    etcd: EtcdServer, prefix: str
) -> None:
    options = mpb.ModelOptions(runtime_options={"batch.max_delay_ms": "2"})
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        with pytest.raises(grpc.RpcError) as err:
            router.management.RegisterModel(
                mpb.RegisterModelRequest(
                    model_id="llm", format="transformers", storage_path="llama", options=options
                )
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "max_batch" in err.value.details()
        # The same options on a model with tensors are batching, as documented.
        assert router.management.RegisterModel(_model("mlp", options=options)).model_id == "mlp"


def test_a_batch_over_the_limit_is_refused_whole(etcd: EtcdServer, prefix: str) -> None:
    models = [_model(f"m{i}") for i in range(MAX_BATCH + 1)]
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        with pytest.raises(grpc.RpcError) as err:
            router.management.RegisterModels(mpb.RegisterModelsRequest(models=models))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert str(MAX_BATCH) in err.value.details()
        assert not router.management.ListModels(mpb.ListModelsRequest()).models


def test_chunks_keep_order_and_both_limits() -> None:
    puts = [Put(f"k{i}", b"v") for i in range(300)]
    assert [len(c) for c in chunks(puts)] == [128, 128, 44]
    assert [p for c in chunks(puts) for p in c] == puts
    big = [Put(f"k{i}", b"x" * (MAX_TXN_BYTES // 3)) for i in range(7)]
    assert [len(c) for c in chunks(big)] == [2, 2, 2, 1]
    huge = [Put("alone", b"x" * (MAX_TXN_BYTES + 1))]
    assert chunks(huge) == [huge]  # etcd answers for one record too large by itself
    assert chunks([]) == []


def test_mesh_register_file_registers_and_loads_and_reports_failures(
    etcd: EtcdServer, prefix: str, pods: list[RunningPod], tmp_path: Path
) -> None:
    entries = [{"modelId": f"file-{i}", "format": "onnx", "storagePath": "mlp"} for i in range(5)]
    entries[0]["loadNow"] = True
    entries.append({"model_id": "broken id", "format": "onnx", "storage_path": "mlp"})
    path = tmp_path / "models.json"
    path.write_text(json.dumps(entries))
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        cmd = [sys.executable, "-m", "mesh", "register", "--file", str(path),
               "--router", router.address, "--timeout", "120"]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        assert done.returncode == 1, done.stdout + done.stderr  # one of them failed
        assert "5 registered, 1 failed" in done.stdout
        assert "broken id" in done.stdout and "INVALID_ARGUMENT" in done.stdout
        # Its loadNow was honoured (nothing else asks for file-0); the pod's placement record
        # reaches the router's view just after the load itself.
        wait_until(
            lambda: (
                router.management.GetModelStatus(mpb.GetModelStatusRequest(model_id="file-0")).state
                == "LOADED"
            ),
            what="file-0 loaded",
        )
        others = router.management.GetModelStatus(mpb.GetModelStatusRequest(model_id="file-3"))
        assert others.state == "NOT_LOADED"  # no loadNow: registered only
        answer = router.v2.ModelInfer(infer_request("file-4", input=np.ones((1, 64), np.float32)))
        assert output_array(answer, "output").shape == (1, 10)


def test_an_adapter_is_not_written_when_its_base_in_the_same_batch_fails(
    etcd: EtcdServer, prefix: str
) -> None:
    """A base and its adapter in one batch but in different transactions: the base's
    transaction failing must not leave the adapter registered on a base that is not."""
    from mesh.errors import Unavailable

    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        store = router.server.store
        keys = Keys(prefix)
        real_txn = store.txn

        async def txn(compares, puts, *args, **kwargs):  # type: ignore[no-untyped-def]
            if any(p.key == keys.model("base-0") for p in puts):
                raise Unavailable("etcd lost the transaction")
            return await real_txn(compares, puts, *args, **kwargs)

        store.txn = txn
        try:
            models = [_model("base-0")] + [_model(f"fill-{i:03d}") for i in range(MAX_TXN_OPS)]
            models.append(_model("adapter-0", base="base-0"))  # past the first transaction
            response = router.management.RegisterModels(mpb.RegisterModelsRequest(models=models))
        finally:
            store.txn = real_txn
        by_id = {r.model_id: r for r in response.results}
        assert by_id["base-0"].code == grpc.StatusCode.UNAVAILABLE.value[0]
        assert by_id["adapter-0"].code == grpc.StatusCode.UNAVAILABLE.value[0]
        assert "base-0" in by_id["adapter-0"].message and not by_id["adapter-0"].HasField("status")
        listed = {m.model_id for m in router.management.ListModels(mpb.ListModelsRequest()).models}
        assert "base-0" not in listed and "adapter-0" not in listed
