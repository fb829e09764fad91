"""Choosing a model's ServingRuntime and reading InferenceServices: pure, no I/O."""

from __future__ import annotations

from typing import Any

import pytest

from mesh.controller import inferenceservice as isvc
from mesh.controller import predictor as pr
from mesh.controller.runtimes import choose_runtime, effective, parse_runtime
from mesh.storageref import StorageRef


def rt(name: str, *formats: dict[str, Any], cluster: bool = False, **spec: Any) -> Any:
    return parse_runtime(
        {"metadata": {"name": name, "uid": name},
         "spec": {"multiModel": True, "supportedModelFormats": list(formats), **spec}},
        cluster,
    )  # fmt: skip


def fmt(name: str, auto: bool = True, priority: int = 0, version: str = "") -> dict[str, Any]:
    return {"name": name, "autoSelect": auto, "priority": priority, "version": version}


def test_the_highest_priority_auto_selected_runtime_serves_a_format() -> None:
    runtimes = [rt("low", fmt("onnx", priority=1)), rt("high", fmt("onnx", priority=5)),
                rt("manual", fmt("onnx", auto=False, priority=9))]  # fmt: skip
    assert choose_runtime(runtimes, "onnx", "", "").name == "high"


def test_a_namespaced_runtime_wins_a_tie_and_shadows_a_cluster_one_of_its_name() -> None:
    own = [rt("b-own", fmt("onnx"))]
    cluster = [
        rt("a-cluster", fmt("onnx"), cluster=True),
        rt("b-own", fmt("xgboost"), cluster=True),
    ]
    runtimes = effective(own, cluster)
    assert [r.name for r in runtimes] == ["b-own", "a-cluster"]
    assert choose_runtime(runtimes, "onnx", "", "").name == "b-own"
    with pytest.raises(pr.InvalidSpec) as shadowed:
        choose_runtime(runtimes, "xgboost", "", "")
    assert shadowed.value.reason == "NoSupportingRuntime"


def test_a_model_version_needs_a_runtime_of_that_version_or_of_none() -> None:
    runtimes = [rt("v1", fmt("onnx", version="1")), rt("any", fmt("xgboost"))]
    assert choose_runtime(runtimes, "onnx", "1", "").name == "v1"
    assert choose_runtime(runtimes, "xgboost", "2", "").name == "any"
    with pytest.raises(pr.InvalidSpec, match="version '2'"):
        choose_runtime(runtimes, "onnx", "2", "")


@pytest.mark.parametrize(
    ("named", "reason"),
    [
        ("missing", "RuntimeNotRecognized"),
        ("off", "RuntimeDisabled"),
        ("single", "RuntimeNotRecognized"),
        ("xgb", "NoSupportingRuntime"),
    ],
)
def test_a_named_runtime_that_cannot_serve_the_model_says_why(named: str, reason: str) -> None:
    runtimes = [rt("off", fmt("onnx"), disabled=True), rt("single", fmt("onnx"), multiModel=False),
                rt("xgb", fmt("xgboost")), rt("ok", fmt("onnx"))]  # fmt: skip
    with pytest.raises(pr.InvalidSpec) as refused:
        choose_runtime(runtimes, "onnx", "", named)
    assert refused.value.reason == reason
    # Named, a runtime serves its formats without autoSelect.
    assert choose_runtime([rt("m", fmt("onnx", auto=False))], "onnx", "", "m").name == "m"


def test_a_format_only_listed_by_runtimes_the_mesh_cannot_run_has_no_runtime() -> None:
    runtimes = [rt("sk", fmt("sklearn")), rt("ok", fmt("onnx"))]
    with pytest.raises(pr.InvalidSpec) as refused:
        choose_runtime(runtimes, "sklearn", "", "")
    assert refused.value.reason == "NoSupportingRuntime"
    assert "onnx" in str(refused.value)


def test_the_pool_is_part_of_the_model_and_its_placement() -> None:
    resource = {"metadata": {"name": "fraud"},
                "spec": {"modelType": {"name": "onnx"}, "path": "mlp"}}  # fmt: skip
    plain = pr.parse(resource)
    pooled = pr.parse(resource, pool="onnx-rt")
    assert plain.required_labels == {} and pooled.required_labels == {"pool": "onnx-rt"}
    assert plain.model_id != pooled.model_id  # moving pools is a new model, loaded first


def isvc_obj(model: dict[str, Any], **annotations: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "fraud", "namespace": "ml",
                     "annotations": {isvc.DEPLOYMENT_MODE: "ModelMesh", **annotations}},
        "spec": {"predictor": {"model": model}},
    }  # fmt: skip


def test_an_inference_service_reads_as_the_predictor_it_stands_for() -> None:
    obj = isvc_obj({"modelFormat": {"name": "onnx", "version": "1"}, "runtime": "onnx-rt",
                    "storage": {"key": "s3", "path": "fraud/v3"}})  # fmt: skip
    spec = pr.parse(isvc.as_predictor(obj), {"onnx-rt"})
    assert (spec.format, spec.version, spec.runtime) == ("onnx", "1", "onnx-rt")
    assert spec.storage == StorageRef("s3", "fraud/v3")

    uri = isvc_obj({"modelFormat": {"name": "xgboost"}, "storageUri": "s3://models/fraud/v3"},
                   **{isvc.SECRET_KEY: "minio"})  # fmt: skip
    spec = pr.parse(isvc.as_predictor(uri))
    assert (spec.storage, dict(spec.options)) == (StorageRef("minio", "fraud/v3", "models"), {})
    assert isvc.is_modelmesh(uri)
    assert not isvc.is_modelmesh({"metadata": {"name": "kserve-one"}})


@pytest.mark.parametrize(
    ("model", "says"),
    [
        ({"storageUri": "s3://b/p"}, "modelFormat.name is required"),
        ({"modelFormat": {"name": "onnx"}}, "storageUri or storage is required"),
        ({"modelFormat": {"name": "onnx"}, "storageUri": "https://x/y"}, "only s3://"),
        (
            {"modelFormat": {"name": "onnx"}, "storageUri": "s3://b/p", "runtime": {"n": 1}},
            "runtime's name",
        ),
        (
            {
                "modelFormat": {"name": "onnx"},
                "storageUri": "s3://b/p",
                "storage": {"parameters": ["region=eu"]},
            },
            "parameters must be a map",
        ),
    ],
)
def test_a_bad_inference_service_says_what_is_wrong(model: dict[str, Any], says: str) -> None:
    with pytest.raises(pr.InvalidSpec, match=says):
        isvc.as_predictor(isvc_obj(model))


def test_the_framework_form_is_refused_by_name() -> None:
    obj = {
        "metadata": {"name": "x"},
        "spec": {"predictor": {"sklearn": {"storageUri": "s3://b/p"}}},
    }
    with pytest.raises(pr.InvalidSpec, match=r"framework form \['sklearn'\]"):
        isvc.as_predictor(obj)


def test_the_status_is_kserves_and_reads_back_as_it_was_made() -> None:
    status = {"available": True, "activeModelState": "Loaded", "targetModelState": "",
              "transitionStatus": "UpToDate", "totalCopies": 1, "failedCopies": 0,
              "grpcEndpoint": "grpc://mesh-router.ml:8033",
              "lastFailureInfo": {"reason": "ModelLoadFailed", "message": "m", "modelId": "fraud-1",
                                  "time": "2026-01-01T00:00:00Z"}}  # fmt: skip
    out = isvc.status(status, {"status": {}}, "2026-01-02T00:00:00Z")
    assert out["modelStatus"]["states"] == {"activeModelState": "Loaded", "targetModelState": ""}
    assert out["modelStatus"]["lastFailureInfo"]["modelRevisionName"] == "fraud-1"
    assert out["url"] == "grpc://mesh-router.ml:8033"
    assert {c["type"]: c["status"] for c in out["conditions"]} == {
        "PredictorReady": "True", "Ready": "True",
    }  # fmt: skip
    back = isvc.predictor_status(out)
    assert back["lastFailureInfo"] == status["lastFailureInfo"]
    assert back["activeModelState"] == "Loaded"
    # Unchanged, a condition keeps the time it last changed.
    again = isvc.status(status, {"status": out}, "2026-01-03T00:00:00Z")
    assert again == out
