"""`mesh up --internal-tls`: the router reaches its pods over mutual TLS with a CA made for
the run, and the pods' ports refuse everyone else."""

from __future__ import annotations

import stat
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton

from mesh import examples
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import grpc_predict_v2_pb2_grpc as pb_grpc
from mesh.gen import management_pb2 as mpb
from mesh.gen import management_pb2_grpc
from mesh.up import UpSettings, local_mesh


def _live(channel: grpc.Channel) -> str:
    try:
        pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=10)
        return "OK"
    except grpc.RpcError as exc:
        return exc.code().name


@pytest.mark.slow
def test_mesh_up_with_internal_tls_serves_through_pods_that_take_only_its_router(
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    examples.xgboost_booster(models / "fraud", n_trees=5)
    settings = UpSettings(
        storage=models, pods=1, capacity="1Gi", port=0, rest_port=0, internal_tls=True
    )
    with local_mesh(settings) as mesh:
        assert mesh.tls is not None
        tls_dir = mesh.tls.directory
        # The run's keys are readable by this user alone.
        assert stat.S_IMODE(tls_dir.stat().st_mode) == 0o700
        assert "pod-0      gRPC+mTLS 127.0.0.1:" in mesh.describe()

        with grpc.insecure_channel(mesh.router.address) as channel:
            management_pb2_grpc.ManagementStub(channel).RegisterModel(
                mpb.RegisterModelRequest(model_id="fraud", format="xgboost", storage_path="fraud")
            )
        client = triton.InferenceServerClient(mesh.router.address)
        x = triton.InferInput("input__0", [1, 64], "FP32")
        x.set_data_from_numpy(np.zeros((1, 64), np.float32))
        # A miss: the router loads the model over the pod's control API, then infers, over TLS.
        assert client.infer("fraud", [x], client_timeout=60).as_numpy("output__0").shape[0] == 1

        pod = mesh.pods[0].address
        with grpc.insecure_channel(pod) as channel:
            assert _live(channel) == "UNAVAILABLE"
        ca = (tls_dir / "ca.crt").read_bytes()
        options = [("grpc.ssl_target_name_override", "localhost")]
        with grpc.secure_channel(pod, grpc.ssl_channel_credentials(ca), options) as channel:
            assert _live(channel) == "UNAVAILABLE"  # no client certificate
        with mesh.tls.channel(pod) as channel:
            assert _live(channel) == "OK"  # the router's
    assert not tls_dir.exists()  # gone with the run
