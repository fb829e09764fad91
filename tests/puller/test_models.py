"""Real models through the whole puller: uploaded to S3 (moto), pulled over gRPC, loaded by
their frameworks from the path the puller returned."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mesh import examples
from mesh.storageref import StorageRef
from tests.puller.servers import MotoServer
from tests.puller.test_s3 import s3_entry


def upload_dir(moto: MotoServer, bucket: str, directory: Path, prefix: str) -> None:
    s3 = moto.client()
    for path in directory.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(directory)}")


@pytest.mark.slow
async def test_onnx_and_xgboost_models_pulled_from_s3_load_in_their_frameworks(
    tmp_path: Path, moto: MotoServer, bucket: str, serve_puller: Callable[..., Any]
) -> None:
    onnx_file = examples.onnx_mlp(tmp_path / "src" / "mlp")
    xgb_file = examples.xgboost_booster(tmp_path / "src" / "xgb", n_trees=5)
    await asyncio.to_thread(upload_dir, moto, bucket, tmp_path / "src", "models")
    served = await serve_puller({"default": s3_entry(moto, bucket)})

    onnx_local = Path(await served.client.pull("mlp", StorageRef("", "models/mlp/model.onnx")))
    xgb_dir = Path(await served.client.pull("xgb", StorageRef("", "models/xgb")))  # a prefix
    await asyncio.to_thread(check_loads, onnx_local, onnx_file, xgb_dir / xgb_file.name, xgb_file)


def check_loads(onnx_local: Path, onnx_file: Path, xgb_local: Path, xgb_file: Path) -> None:
    assert onnx_local.read_bytes() == onnx_file.read_bytes()
    assert xgb_local.read_bytes() == xgb_file.read_bytes()

    import onnxruntime
    import xgboost

    session = onnxruntime.InferenceSession(str(onnx_local), providers=["CPUExecutionProvider"])
    x = np.ones((2, 64), dtype=np.float32)
    (out,) = session.run(None, {"input": x})
    assert out.shape == (2, 10)
    booster = xgboost.Booster(model_file=str(xgb_local))
    assert booster.num_boosted_rounds() == 5
    assert booster.inplace_predict(x).shape == (2,)


@pytest.mark.slow
async def test_a_pod_loads_models_from_s3_through_its_puller_and_releases_them(
    tmp_path: Path, moto: MotoServer, bucket: str, serve_puller: Callable[..., Any]
) -> None:
    from mesh.gen import runtime_pb2 as rpb
    from tests.helpers import infer_request, output_array, running_pod

    examples.onnx_mlp(tmp_path / "src" / "mlp")
    examples.xgboost_booster(tmp_path / "src" / "xgb", n_trees=5)
    await asyncio.to_thread(upload_dir, moto, bucket, tmp_path / "src", "models")
    served = await serve_puller({"default": s3_entry(moto, bucket)})

    loop = asyncio.get_running_loop()

    def held() -> dict[str, tuple[str, ...]]:
        status = asyncio.run_coroutine_threadsafe(served.client.status(), loop).result(10)
        return {a.source.rsplit("/", 1)[-1]: a.models for a in status.artifacts}

    def scenario() -> None:
        with running_pod(puller=served.server.address) as pod:
            for model_id, fmt, path, name, out in (
                ("mlp", "onnx", "models/mlp", "input", "output"),
                ("xgb", "xgboost", "models/xgb", "input__0", "output__0"),
            ):
                loaded = pod.control.LoadModel(
                    rpb.LoadModelRequest(model_id=model_id, format=fmt, storage_path=path)
                )
                assert loaded.size_bytes > 0
                x = np.ones((3, 64), np.float32)
                response = pod.v2.ModelInfer(infer_request(model_id, **{name: x}))
                assert output_array(response, out).shape[0] == 3
            assert held() == {"mlp": ("mlp",), "xgb": ("xgb",)}
            pod.control.UnloadModel(rpb.UnloadModelRequest(model_id="mlp"))
            for _ in range(100):  # the pod releases just after the unload
                if held()["mlp"] == ():
                    break
                time.sleep(0.02)
            assert held() == {"mlp": (), "xgb": ("xgb",)}

    await asyncio.to_thread(scenario)
