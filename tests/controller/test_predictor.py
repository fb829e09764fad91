"""Predictor specs into registrations, and the mesh's view into a Predictor's status (pure)."""

from __future__ import annotations

import doctest
from typing import Any

import pytest

import mesh.controller.predictor
from mesh.controller.predictor import (
    InvalidSpec,
    ModelView,
    VModelView,
    owned_by,
    parse,
    status,
)
from mesh.storageref import StorageRef, Unpack

NOW = "2026-11-28T10:00:00Z"


def resource(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "fraud", "namespace": "ml"}, "spec": spec}


def test_both_storage_forms() -> None:
    new = parse(resource(modelType={"name": "xgboost"},
                         storage={"key": "s3", "path": "f/v3", "parameters": {"bucket": "b2"}}))  # fmt: skip
    assert (new.format, new.storage) == ("xgboost", StorageRef("s3", "f/v3", bucket="b2"))
    assert new.options == {}  # the puller's options are in the StorageRef, not the runtime's
    old = parse(resource(modelType={"name": "onnx"}, path="m/model.onnx",
                         storage={"s3": {"secretKey": "minio", "bucket": "models"}}))  # fmt: skip
    assert (old.format, old.storage) == ("onnx", StorageRef("minio", "m/model.onnx", "models"))
    assert old.options == {}
    torch = parse(resource(modelType={"name": "pytorch"}, path="ts", gpu="required"))
    assert torch.format == "torch" and torch.required_labels == {"gpu": "true"}
    assert torch.preferred_labels == {}
    prefers = parse(resource(modelType={"name": "pytorch"}, path="ts", gpu="preferred"))
    assert prefers.preferred_labels == {"gpu": "true"} and prefers.required_labels == {}


def test_a_predictor_keeps_the_model_id_it_had_when_parameters_were_runtime_options() -> None:
    # The id the controller made before StorageRef (storage.* runtime options): an upgrade
    # must not make every Predictor a new model.
    spec = parse(resource(modelType={"name": "xgboost"},
                          storage={"key": "s3", "path": "f/v3",
                                   "parameters": {"bucket": "b2", "unpack": "false"}}))  # fmt: skip
    assert spec.model_id == "fraud-9c740930e0"
    assert spec.storage == StorageRef("s3", "f/v3", bucket="b2", unpack=Unpack.FALSE)


def test_the_model_id_changes_with_what_is_loaded_and_only_with_it() -> None:
    base = parse(resource(modelType={"name": "onnx"}, path="a"))
    assert base.model_id == parse(resource(modelType={"name": "onnx"}, path="a")).model_id
    assert owned_by(base.model_id, "fraud") and not owned_by(base.model_id, "fraud2")
    assert not owned_by("fraud-v3", "fraud")
    for changed in (
        resource(modelType={"name": "onnx"}, path="b"),
        resource(modelType={"name": "onnx", "version": "2"}, path="a"),
        resource(modelType={"name": "onnx"}, path="a", storage={"key": "other"}),
        resource(modelType={"name": "onnx"}, path="a", gpu="required"),
    ):
        assert parse(changed).model_id != base.model_id


@pytest.mark.parametrize(
    ("spec", "reason", "words"),
    [
        ({}, "InvalidPredictorSpec", "modelType.name is required"),
        ({"modelType": {"name": "onnx"}}, "InvalidPredictorSpec", "path"),
        ({"modelType": {"name": "sklearn"}, "path": "a"}, "NoSupportingRuntime", "sklearn"),
        ({"modelType": {"name": "onnx"}, "path": "a", "runtime": {"name": "triton"}},
         "RuntimeNotRecognized", "triton"),
        ({"modelType": {"name": "onnx"}, "path": "../etc"}, "InvalidPredictorSpec", ".."),
        ({"modelType": {"name": "onnx"}, "path": "a/./b"}, "InvalidPredictorSpec", "segment"),
        ({"modelType": {"name": "onnx"}, "path": "a//b"}, "InvalidPredictorSpec", "segment"),
        ({"modelType": {"name": "onnx"}, "path": "a", "gpu": "always"}, "InvalidPredictorSpec",
         "gpu"),
        ({"modelType": {"name": "onnx"}, "path": "a", "storage": {"parameters": {"x": "1"}}},
         "InvalidPredictorSpec", "x"),
        ({"modelType": {"name": "onnx"}, "path": "a", "storage": {"s3": {"bucket": "b"}}},
         "InvalidPredictorSpec", "secretKey"),
        ({"modelType": {"name": "onnx"}, "path": "a",
          "storage": {"parameters": {"unpack": "maybe"}}}, "InvalidPredictorSpec", "unpack"),
        ({"modelType": {"name": "onnx"}, "path": "a",
          "storage": {"parameters": {"sha256": "xyz"}}}, "InvalidPredictorSpec", "sha256"),
        ({"modelType": {"name": "onnx"}, "path": "a",
          "storage": {"parameters": {"bucket": "a/b"}}}, "InvalidPredictorSpec", "bucket"),
    ],
)  # fmt: skip
def test_invalid_specs_say_why(spec: dict[str, Any], reason: str, words: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        parse(resource(**spec))
    assert err.value.reason == reason
    assert words in str(err.value)


def test_a_name_too_long_for_a_model_id_is_refused_naming_the_rule() -> None:
    # A Kubernetes name may have 253 characters; its model id adds a dash and a hash.
    long = {"metadata": {"name": "a" * 250}, "spec": {"modelType": {"name": "onnx"}, "path": "a"}}
    with pytest.raises(InvalidSpec, match="253 characters"):
        parse(long)


SPEC = parse(resource(modelType={"name": "onnx"}, path="a"))
ID = SPEC.model_id


def test_loaded_and_up_to_date() -> None:
    out = status(SPEC, VModelView(ID, ID, "UP_TO_DATE"),
                 {ID: ModelView(ID, "LOADED", loaded_copies=2)}, {}, NOW, "grpc://r:8033")  # fmt: skip
    assert out == {
        "grpcEndpoint": "grpc://r:8033", "httpEndpoint": "", "available": True,
        "activeModelState": "Loaded", "targetModelState": "", "transitionStatus": "UpToDate",
        "totalCopies": 2, "failedCopies": 0,
    }  # fmt: skip


def test_registered_not_loaded_is_standby_and_available() -> None:
    out = status(SPEC, VModelView(ID, ID, "UP_TO_DATE"), {ID: ModelView(ID, "NOT_LOADED")}, {}, NOW)
    assert (out["activeModelState"], out["available"]) == ("Standby", True)


def test_a_failure_is_kept_until_a_copy_loads() -> None:
    failed = ModelView(ID, "FAILED", failed_copies=1, last_failure="pod-1: bad graph", failed_at=5)
    out = status(SPEC, VModelView(ID, ID, "UP_TO_DATE"), {ID: failed}, {}, NOW)
    assert out["activeModelState"] == "FailedToLoad" and out["available"] is False
    info = out["lastFailureInfo"]
    assert info == {"reason": "ModelLoadFailed", "message": "bad graph", "location": "pod-1",
                    "modelId": ID, "time": "1970-01-01T00:00:05Z"}  # fmt: skip
    # The pod forgot the failure; nothing loaded since: still FailedToLoad, same failure.
    later = status(SPEC, VModelView(ID, ID, "UP_TO_DATE"), {ID: ModelView(ID, "NOT_LOADED")},
                   out, "2026-11-28T11:00:00Z")  # fmt: skip
    assert later == {**out, "failedCopies": 0}  # the failed copy's record is gone
    loaded = status(SPEC, VModelView(ID, ID, "UP_TO_DATE"),
                    {ID: ModelView(ID, "LOADED", loaded_copies=1)}, out, NOW)  # fmt: skip
    assert loaded["activeModelState"] == "Loaded" and "lastFailureInfo" not in loaded


def test_a_blocked_transition_keeps_the_old_model_serving() -> None:
    new = parse(resource(modelType={"name": "onnx"}, path="b"))
    models = {
        ID: ModelView(ID, "LOADED", loaded_copies=1),
        new.model_id: ModelView(new.model_id, "FAILED", failed_copies=2,
                                last_failure="pod-0: no such file"),
    }  # fmt: skip
    out = status(new, VModelView(ID, new.model_id, "BLOCKED_BY_FAILED_LOAD"), models, {}, NOW)
    assert out["activeModelState"] == "Loaded" and out["available"] is True
    assert out["targetModelState"] == "FailedToLoad"
    assert out["transitionStatus"] == "BlockedByFailedLoad"
    assert out["lastFailureInfo"]["modelId"] == new.model_id
    assert out["failedCopies"] == 2


def test_an_invalid_spec_after_a_valid_one_keeps_serving_the_old_model() -> None:
    out = status(InvalidSpec("spec.modelType.name is required"), VModelView(ID, ID, "UP_TO_DATE"),
                 {ID: ModelView(ID, "LOADED", loaded_copies=1)}, {}, NOW)  # fmt: skip
    assert out["transitionStatus"] == "InvalidSpec"
    assert out["activeModelState"] == "Loaded" and out["available"] is True
    assert out["lastFailureInfo"]["reason"] == "InvalidPredictorSpec"


def test_not_yet_known_to_the_mesh_is_pending() -> None:
    out = status(SPEC, None, {}, {}, NOW)
    assert (out["activeModelState"], out["available"], out["transitionStatus"]) == (
        "Pending", False, "InProgress",
    )  # fmt: skip


def test_the_usage_example_holds() -> None:
    assert doctest.testmod(mesh.controller.predictor).failed == 0
