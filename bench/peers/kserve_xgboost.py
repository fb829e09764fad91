"""A KServe model server for XGBoost boosters, as a KServe user would write it.

Run by bench/peers.py with the python of a virtual environment that has kserve (and nothing
of mesh): `python kserve_xgboost.py HTTP_PORT GRPC_PORT NAME=MODEL_FILE [NAME=MODEL_FILE ...]`.
`predict` calls `Booster.inplace_predict`, the same call the mesh's XGBoost runtime makes.
"""

from __future__ import annotations

import sys

import numpy as np
import xgboost as xgb
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


class XGBoostModel(Model):  # type: ignore[misc]
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.booster: xgb.Booster | None = None

    def load(self) -> bool:
        self.booster = xgb.Booster(params={"nthread": 1}, model_file=self.path)
        self.ready = True
        return True

    def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None
    ) -> InferResponse:
        assert self.booster is not None
        x = payload.inputs[0].as_numpy()
        y = np.asarray(self.booster.inplace_predict(x, validate_features=False), np.float32)
        out = InferOutput(name="output__0", shape=list(y.shape), datatype="FP32")
        out.set_data_from_numpy(y, binary_data=True)
        return InferResponse(
            response_id=payload.id or "",
            model_name=self.name,
            infer_outputs=[out],
            from_grpc=payload.from_grpc,
            use_binary_outputs=True,
        )


if __name__ == "__main__":
    http_port, grpc_port, *specs = sys.argv[1:]
    models = []
    for spec in specs:
        name, path = spec.split("=", 1)
        model = XGBoostModel(name, path)
        model.load()
        models.append(model)
    ModelServer(
        http_port=int(http_port),
        grpc_port=int(grpc_port),
        workers=1,
        enable_docs_url=False,
        enable_latency_logging=False,
    ).start(models)
