"""Hostile names at the door: RegisterModel and SetVModel refuse them with INVALID_ARGUMENT
naming the rule, and nothing reaches the store."""

from __future__ import annotations

import grpc
import pytest

from mesh.gen import management_pb2 as mpb
from mesh.ids import RULE
from tests.cluster.etcd_server import EtcdServer
from tests.helpers import running_router

# The ids and paths the review registered without a word.
IDS = ["..", ".", "../../etc/passwd", "a/../../b", "mlp/../xgb", " ", "mlp\n", "x" * 10_000]
PATHS = ["../mlp", "models/../../etc", "a/./b", "/etc/passwd", "a//b"]


def test_register_and_set_vmodel_refuse_hostile_names(etcd: EtcdServer, prefix: str) -> None:
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        m = router.management
        for model_id in IDS:
            with pytest.raises(grpc.RpcError) as err:
                m.RegisterModel(
                    mpb.RegisterModelRequest(model_id=model_id, format="onnx", storage_path="mlp")
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, model_id
            assert RULE in err.value.details()
        for path in PATHS:
            with pytest.raises(grpc.RpcError) as err:
                m.RegisterModel(
                    mpb.RegisterModelRequest(model_id="mlp", format="onnx", storage_path=path)
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, path
            assert "segment" in err.value.details() or "relative" in err.value.details()
        assert list(m.ListModels(mpb.ListModelsRequest()).models) == []
        m.RegisterModel(mpb.RegisterModelRequest(model_id="mlp", format="onnx", storage_path="mlp"))
        for vmodel_id in IDS:
            with pytest.raises(grpc.RpcError) as err:
                m.SetVModel(mpb.SetVModelRequest(vmodel_id=vmodel_id, target_model_id="mlp"))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, vmodel_id
            assert RULE in err.value.details()
        assert [s.model_id for s in m.ListModels(mpb.ListModelsRequest()).models] == ["mlp"]
