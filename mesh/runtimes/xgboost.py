"""XGBoost boosters (.json or .ubj) served with inplace_predict.

A booster carries no tensor names, so the signature comes from mesh.json when there is one, and
otherwise is one FP32 input `input__0` of shape [-1, num_features] and one FP32 output
`output__0` of shape [-1] ([-1, num_class] for multi-class probability models).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from mesh.errors import InvalidRequest
from mesh.runtimes.base import LoadRequest, int_option
from mesh.tensors import Signature, TensorSpec


class XGBoostModel:
    platform = "xgboost"

    def __init__(self, booster: Any, signature: Signature) -> None:
        self._booster = booster
        self.signature = signature
        if len(signature.inputs) != 1 or len(signature.outputs) != 1:
            raise InvalidRequest("an XGBoost model has exactly one input and one output")
        self._input = signature.inputs[0].name
        self._output = signature.outputs[0].name

    def predict(
        self, inputs: Mapping[str, np.ndarray[Any, Any]], outputs: Sequence[str]
    ) -> Mapping[str, np.ndarray[Any, Any]]:
        result = self._booster.inplace_predict(inputs[self._input], validate_features=False)
        return {self._output: np.asarray(result, dtype=np.float32)}

    def size_hint(self) -> int | None:
        return None

    def demote(self) -> _BoosterOnHost | None:
        """On a GPU pod: the booster switched to the CPU (its trees leave the device)."""
        booster, self._booster = self._booster, None
        if booster is None:
            return None
        booster.set_param({"device": "cpu"})
        return _BoosterOnHost(booster, self.signature)

    def close(self) -> None:
        self._booster = None


class _BoosterOnHost:
    """A demoted booster: `restore` switches it back to the request's device."""

    def __init__(self, booster: Any, signature: Signature) -> None:
        self._booster = booster
        self._signature = signature
        self.nbytes = len(booster.save_raw("ubj"))

    def restore(self, request: LoadRequest) -> XGBoostModel:
        if self._booster is None:
            raise RuntimeError("the host copy was already let go")
        self._booster.set_param({"device": str(request.device)})
        return XGBoostModel(self._booster, self._signature)

    def close(self) -> None:
        self._booster = None


class XGBoostRuntime:
    name: ClassVar[str] = "xgboost"
    suffixes: ClassVar[tuple[str, ...]] = (".ubj", ".json")
    option_keys: ClassVar[frozenset[str]] = frozenset({"nthread"})
    size_factor: ClassVar[float] = 3.0
    requires: ClassVar[tuple[str, ...]] = ("xgboost",)
    accepts_bytes: ClassVar[bool] = True

    def warm_up(self) -> None:
        import xgboost as xgb

        x = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
        booster = xgb.train(
            {"max_depth": 1, "nthread": 1}, xgb.DMatrix(x, label=[0, 1]), num_boost_round=1
        )
        booster.inplace_predict(x)

    def load(self, request: LoadRequest) -> XGBoostModel:
        import xgboost as xgb

        nthread = int_option(request.options, "nthread", 1, 1)
        params: dict[str, Any] = {"nthread": nthread}
        if request.device.is_cuda:
            params["device"] = str(request.device)
        if request.data is not None:
            booster = xgb.Booster(params=params)
            booster.load_model(bytearray(request.data))
        else:
            booster = xgb.Booster(params=params, model_file=str(request.file))
        inputs = request.config.inputs or (
            TensorSpec("input__0", "FP32", (-1, booster.num_features())),
        )
        outputs = request.config.outputs
        if outputs is None:
            learner = json.loads(booster.save_config())["learner"]
            num_class = int(learner["learner_model_param"].get("num_class", "0"))
            objective = learner["objective"]["name"]
            shape = (-1, num_class) if objective == "multi:softprob" and num_class > 1 else (-1,)
            outputs = (TensorSpec("output__0", "FP32", shape),)
        return XGBoostModel(booster, Signature.of(inputs, outputs))
