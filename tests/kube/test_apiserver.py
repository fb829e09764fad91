"""The fake Kubernetes API server, driven only through the official ``kubernetes`` client."""

from __future__ import annotations

import datetime
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import urllib3
from kubernetes.client import (
    ApiClient,
    CoordinationV1Api,
    CustomObjectsApi,
    V1Lease,
    V1LeaseSpec,
    V1ObjectMeta,
)
from kubernetes.client.exceptions import ApiException
from kubernetes.watch import Watch

from tests.helpers import wait_until
from tests.kube.apiserver import FakeKubeAPI, KubeError

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1alpha1", "predictors"
NS = "default"
CRD = (GROUP, VERSION)


def predictor(name: str, spec: dict[str, Any] | None = None, **metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Predictor",
        "metadata": {"name": name, **metadata},
        "spec": spec if spec is not None else {"modelFormat": "onnx", "storageUri": "s3://m/a"},
    }


@pytest.fixture
def api() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI(bookmark_interval=0.2) as server:
        yield server


@pytest.fixture
def api_client(api: FakeKubeAPI) -> Iterator[ApiClient]:
    client = api.client()
    yield client
    client.close()


@pytest.fixture
def crd(api_client: ApiClient) -> CustomObjectsApi:
    return CustomObjectsApi(api_client)


@pytest.fixture
def leases(api_client: ApiClient) -> CoordinationV1Api:
    return CoordinationV1Api(api_client)


class Collector:
    """Runs ``Watch().stream(func, ...)`` in a thread and hands over its events."""

    def __init__(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.watch = Watch()
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(func, args, kwargs), daemon=True, name="watch-collector"
        )
        self._thread.start()

    def _run(self, func: Callable[..., Any], args: Any, kwargs: Any) -> None:
        try:
            for event in self.watch.stream(func, *args, **kwargs):
                self.events.put(event)
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    def next(self, timeout: float = 5.0) -> dict[str, Any]:
        return self.events.get(timeout=timeout)

    def take(self, count: int, timeout: float = 5.0) -> list[tuple[str, str]]:
        """(type, name) of the next ``count`` events that are not bookmarks."""
        taken = []
        while len(taken) < count:
            event = self.next(timeout)
            if event["type"] != "BOOKMARK":
                taken.append((event["type"], event["raw_object"]["metadata"]["name"]))
        return taken

    def stop(self) -> None:
        self.watch.stop()


def status_of(excinfo: pytest.ExceptionInfo[ApiException]) -> tuple[int, str]:
    import json

    body = json.loads(excinfo.value.body)
    assert body["kind"] == "Status" and body["code"] == excinfo.value.status
    return excinfo.value.status, body["reason"]


# --- create, get, list --------------------------------------------------------------------------


def test_create_sets_server_metadata_and_get_and_list_read_it_back(crd: CustomObjectsApi) -> None:
    body = predictor("mlp", labels={"app": "mesh"})
    body["status"] = {"phase": "Ready"}  # a create cannot set status when the subresource exists

    created = crd.create_namespaced_custom_object(*CRD, NS, PLURAL, body)

    meta = created["metadata"]
    assert meta["namespace"] == NS and meta["generation"] == 1
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z")
    assert int(meta["resourceVersion"]) > 0
    assert "status" not in created
    assert crd.get_namespaced_custom_object(*CRD, NS, PLURAL, "mlp") == created
    listed = crd.list_namespaced_custom_object(*CRD, NS, PLURAL)
    assert listed["kind"] == "PredictorList" and listed["items"] == [created]
    assert listed["metadata"]["resourceVersion"] == meta["resourceVersion"]


def test_create_refuses_duplicates_and_bad_bodies(crd: CustomObjectsApi) -> None:
    crd.create_namespaced_custom_object(*CRD, NS, PLURAL, predictor("mlp"))

    with pytest.raises(ApiException) as dup:
        crd.create_namespaced_custom_object(*CRD, NS, PLURAL, predictor("mlp"))
    assert status_of(dup) == (409, "AlreadyExists")
    with pytest.raises(ApiException) as wrong_kind:
        crd.create_namespaced_custom_object(*CRD, NS, PLURAL, {**predictor("x"), "kind": "Lease"})
    assert status_of(wrong_kind) == (400, "BadRequest")
    bad = {**predictor("x"), "apiVersion": "serving.kserve.io/v1"}
    with pytest.raises(ApiException) as wrong_version:
        crd.create_namespaced_custom_object(*CRD, NS, PLURAL, bad)
    assert status_of(wrong_version) == (400, "BadRequest")
    with pytest.raises(ApiException) as nameless:
        crd.create_namespaced_custom_object(*CRD, NS, PLURAL, {**predictor(""), "metadata": {}})
    assert status_of(nameless) == (422, "Invalid")
    with pytest.raises(ApiException) as missing:
        crd.get_namespaced_custom_object(*CRD, NS, PLURAL, "nope")
    assert status_of(missing) == (404, "NotFound")


def test_generate_name_and_paged_lists(crd: CustomObjectsApi) -> None:
    for _ in range(3):
        crd.create_namespaced_custom_object(
            *CRD, NS, PLURAL, {**predictor(""), "metadata": {"generateName": "p-"}}
        )

    first = crd.list_namespaced_custom_object(*CRD, NS, PLURAL, limit=2)
    rest = crd.list_namespaced_custom_object(
        *CRD, NS, PLURAL, limit=2, _continue=first["metadata"]["continue"]
    )

    names = [o["metadata"]["name"] for o in first["items"] + rest["items"]]
    assert len(set(names)) == 3 and all(n.startswith("p-") and len(n) == 7 for n in names)
    assert first["metadata"]["remainingItemCount"] == 1
    assert "continue" not in rest["metadata"]


def test_list_by_label_and_across_namespaces(api: FakeKubeAPI, crd: CustomObjectsApi) -> None:
    api.create(PLURAL, predictor("a", labels={"tier": "gold"}))
    api.create(PLURAL, predictor("b", labels={"tier": "bronze"}))
    api.create(PLURAL, predictor("c", labels={"tier": "gold"}), namespace="other")

    gold = crd.list_cluster_custom_object(*CRD, PLURAL, label_selector="tier=gold")
    not_gold = crd.list_namespaced_custom_object(*CRD, NS, PLURAL, label_selector="tier!=gold")

    assert [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in gold["items"]] == [
        ("default", "a"),
        ("other", "c"),
    ]
    assert [o["metadata"]["name"] for o in not_gold["items"]] == ["b"]


# --- replace and patch --------------------------------------------------------------------------


def test_replace_needs_the_current_resource_version(crd: CustomObjectsApi) -> None:
    stale = crd.create_namespaced_custom_object(*CRD, NS, PLURAL, predictor("mlp"))
    current = crd.patch_namespaced_custom_object(
        *CRD, NS, PLURAL, "mlp", {"metadata": {"labels": {"a": "b"}}}
    )

    with pytest.raises(ApiException) as conflict:
        crd.replace_namespaced_custom_object(*CRD, NS, PLURAL, "mlp", stale)
    assert status_of(conflict) == (409, "Conflict")
    unconditional = predictor("mlp", {"modelFormat": "xgboost"})
    with pytest.raises(ApiException) as invalid:
        crd.replace_namespaced_custom_object(*CRD, NS, PLURAL, "mlp", unconditional)
    assert status_of(invalid) == (422, "Invalid")

    current["spec"] = {"modelFormat": "xgboost"}
    current["status"] = {"phase": "Ready"}  # ignored: status is a subresource
    replaced = crd.replace_namespaced_custom_object(*CRD, NS, PLURAL, "mlp", current)

    assert replaced["spec"] == {"modelFormat": "xgboost"} and "status" not in replaced
    assert replaced["metadata"]["generation"] == 2
    assert int(replaced["metadata"]["resourceVersion"]) > int(
        current["metadata"]["resourceVersion"]
    )


def test_generation_moves_with_spec_and_no_op_writes_are_not_written(
    crd: CustomObjectsApi,
) -> None:
    created = crd.create_namespaced_custom_object(*CRD, NS, PLURAL, predictor("mlp"))
    rv = created["metadata"]["resourceVersion"]

    labelled = crd.patch_namespaced_custom_object(
        *CRD, NS, PLURAL, "mlp", {"metadata": {"labels": {"a": "b"}}}
    )
    same = crd.patch_namespaced_custom_object(*CRD, NS, PLURAL, "mlp", {"spec": created["spec"]})
    resized = crd.patch_namespaced_custom_object(*CRD, NS, PLURAL, "mlp", {"spec": {"copies": 2}})

    assert labelled["metadata"]["generation"] == 1 and labelled["metadata"]["resourceVersion"] > rv
    assert same == labelled  # nothing changed: no new resourceVersion
    assert resized["metadata"]["generation"] == 2
    assert resized["spec"] == {**created["spec"], "copies": 2}


def test_merge_patch_ignores_status_and_honours_a_resource_version(crd: CustomObjectsApi) -> None:
    created = crd.create_namespaced_custom_object(*CRD, NS, PLURAL, predictor("mlp"))
    crd.patch_namespaced_custom_object(*CRD, NS, PLURAL, "mlp", {"spec": {"copies": 2}})

    patched = crd.patch_namespaced_custom_object(
        *CRD, NS, PLURAL, "mlp", {"spec": {"storageUri": None}, "status": {"phase": "Ready"}}
    )
    with pytest.raises(ApiException) as conflict:
        crd.patch_namespaced_custom_object(
            *CRD,
            NS,
            PLURAL,
            "mlp",
            {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]}, "spec": {}},
        )

    assert patched["spec"] == {"modelFormat": "onnx", "copies": 2} and "status" not in patched
    assert status_of(conflict) == (409, "Conflict")


def test_json_patch_on_object_and_status(crd: CustomObjectsApi) -> None:
    crd.create_namespaced_custom_object(*CRD, NS, PLURAL, predictor("mlp"))
    json_patch = "application/json-patch+json"

    spec = crd.patch_namespaced_custom_object(
        *CRD,
        NS,
        PLURAL,
        "mlp",
        [
            {"op": "test", "path": "/spec/modelFormat", "value": "onnx"},
            {"op": "replace", "path": "/spec/modelFormat", "value": "torch"},
            {"op": "add", "path": "/metadata/finalizers", "value": ["mesh/unload"]},
        ],
        _content_type=json_patch,
    )
    status = crd.patch_namespaced_custom_object_status(
        *CRD,
        NS,
        PLURAL,
        "mlp",
        [{"op": "add", "path": "/status", "value": {"phase": "Loading"}}],
        _content_type=json_patch,
    )
    with pytest.raises(ApiException) as failed_test:
        crd.patch_namespaced_custom_object(
            *CRD,
            NS,
            PLURAL,
            "mlp",
            [{"op": "test", "path": "/spec/modelFormat", "value": "onnx"}],
            _content_type=json_patch,
        )
    # kubernetes 37 sends a list body as a merge patch unless told otherwise; the server refuses.
    with pytest.raises(ApiException) as list_as_merge:
        crd.patch_namespaced_custom_object(
            *CRD, NS, PLURAL, "mlp", [{"op": "remove", "path": "/spec/storageUri"}]
        )

    assert spec["spec"]["modelFormat"] == "torch" and spec["metadata"]["finalizers"] == [
        "mesh/unload"
    ]
    assert status["status"] == {"phase": "Loading"} and status["spec"] == spec["spec"]
    assert status_of(failed_test) == (422, "Invalid")
    assert status_of(list_as_merge) == (400, "BadRequest")


def test_status_writes_leave_spec_and_generation(crd: CustomObjectsApi) -> None:
    crd.create_namespaced_custom_object(*CRD, NS, PLURAL, predictor("mlp"))

    merged = crd.patch_namespaced_custom_object_status(
        *CRD,
        NS,
        PLURAL,
        "mlp",
        {"spec": {"modelFormat": "hacked"}, "status": {"phase": "Ready", "copies": 1}},
    )
    merged["status"] = {"phase": "Failed"}
    merged["spec"] = {"modelFormat": "hacked"}
    replaced = crd.replace_namespaced_custom_object_status(*CRD, NS, PLURAL, "mlp", merged)

    assert merged["metadata"]["generation"] == 1
    assert replaced["spec"]["modelFormat"] == "onnx" and replaced["metadata"]["generation"] == 1
    assert replaced["status"] == {"phase": "Failed"}  # a replace takes status whole
    got = crd.get_namespaced_custom_object_status(*CRD, NS, PLURAL, "mlp")
    assert got == replaced


def test_strategic_merge_patch_is_unsupported_on_custom_resources(
    crd: CustomObjectsApi,
) -> None:
    crd.create_namespaced_custom_object(*CRD, NS, PLURAL, predictor("mlp"))

    with pytest.raises(ApiException) as unsupported:
        crd.patch_namespaced_custom_object(
            *CRD,
            NS,
            PLURAL,
            "mlp",
            {"spec": {"copies": 2}},
            _content_type="application/strategic-merge-patch+json",
        )

    assert status_of(unsupported) == (415, "UnsupportedMediaType")


# --- deletion -----------------------------------------------------------------------------------


def test_finalizers_hold_deletion_until_removed(api: FakeKubeAPI, crd: CustomObjectsApi) -> None:
    crd.create_namespaced_custom_object(
        *CRD, NS, PLURAL, predictor("mlp", finalizers=["mesh/unload"])
    )
    rv = crd.list_namespaced_custom_object(*CRD, NS, PLURAL)["metadata"]["resourceVersion"]
    watch = Collector(
        crd.list_namespaced_custom_object, *CRD, NS, PLURAL, resource_version=rv, timeout_seconds=5
    )

    deleting = crd.delete_namespaced_custom_object(*CRD, NS, PLURAL, "mlp")
    still_there = crd.get_namespaced_custom_object(*CRD, NS, PLURAL, "mlp")
    with pytest.raises(ApiException) as new_finalizer:
        crd.patch_namespaced_custom_object(
            *CRD, NS, PLURAL, "mlp", {"metadata": {"finalizers": ["mesh/unload", "other"]}}
        )
    crd.patch_namespaced_custom_object(*CRD, NS, PLURAL, "mlp", {"metadata": {"finalizers": []}})

    assert deleting["metadata"]["deletionTimestamp"] and still_there == deleting
    assert deleting["metadata"]["deletionGracePeriodSeconds"] == 0
    assert deleting["metadata"]["generation"] == 2
    assert status_of(new_finalizer) == (422, "Invalid")
    with pytest.raises(ApiException) as gone:
        crd.get_namespaced_custom_object(*CRD, NS, PLURAL, "mlp")
    assert gone.value.status == 404
    assert api.objects(PLURAL, NS) == []
    assert watch.take(2) == [("MODIFIED", "mlp"), ("DELETED", "mlp")]
    watch.stop()


def test_delete_without_finalizers_is_immediate(crd: CustomObjectsApi) -> None:
    created = crd.create_namespaced_custom_object(*CRD, NS, PLURAL, predictor("mlp"))
    watch = Collector(
        crd.list_namespaced_custom_object,
        *CRD,
        NS,
        PLURAL,
        resource_version=created["metadata"]["resourceVersion"],
        timeout_seconds=5,
    )

    deleted = crd.delete_namespaced_custom_object(*CRD, NS, PLURAL, "mlp")
    event = watch.next()

    assert deleted["metadata"]["uid"] == created["metadata"]["uid"]
    assert event["type"] == "DELETED"
    assert int(event["raw_object"]["metadata"]["resourceVersion"]) > int(
        created["metadata"]["resourceVersion"]
    )
    with pytest.raises(ApiException) as missing:
        crd.delete_namespaced_custom_object(*CRD, NS, PLURAL, "mlp")
    assert status_of(missing) == (404, "NotFound")
    watch.stop()


# --- watch --------------------------------------------------------------------------------------


def test_watch_from_a_list_sees_later_events_in_order(
    api: FakeKubeAPI, crd: CustomObjectsApi
) -> None:
    api.create(PLURAL, predictor("before"))
    listed = crd.list_namespaced_custom_object(*CRD, NS, PLURAL)
    namespaced = Collector(
        crd.list_namespaced_custom_object,
        *CRD,
        NS,
        PLURAL,
        resource_version=listed["metadata"]["resourceVersion"],
        timeout_seconds=5,
    )
    everywhere = Collector(
        crd.list_cluster_custom_object,
        *CRD,
        PLURAL,
        resource_version=listed["metadata"]["resourceVersion"],
        timeout_seconds=5,
    )

    crd.create_namespaced_custom_object(*CRD, NS, PLURAL, predictor("a"))
    api.create(PLURAL, predictor("elsewhere"), namespace="other")
    api.patch(PLURAL, NS, "a", {"spec": {"copies": 3}})
    api.delete(PLURAL, NS, "before")

    assert namespaced.take(3) == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "before")]
    assert everywhere.take(4) == [
        ("ADDED", "a"),
        ("ADDED", "elsewhere"),
        ("MODIFIED", "a"),
        ("DELETED", "before"),
    ]
    namespaced.stop()
    everywhere.stop()
    wait_until(lambda: api.watch_count() == 0)  # the server notices a client hanging up


def test_watch_without_a_resource_version_starts_with_the_current_objects(
    api: FakeKubeAPI, crd: CustomObjectsApi
) -> None:
    api.create(PLURAL, predictor("a"))
    api.create(PLURAL, predictor("b"))
    watch = Collector(crd.list_namespaced_custom_object, *CRD, NS, PLURAL, timeout_seconds=5)

    first = watch.take(2)
    api.wait_for_watches(1)
    api.patch(PLURAL, NS, "b", {"spec": {"copies": 2}})

    assert first == [("ADDED", "a"), ("ADDED", "b")]
    assert watch.take(1) == [("MODIFIED", "b")]
    watch.stop()


def test_watch_follows_objects_in_and_out_of_a_label_selector(
    api: FakeKubeAPI, crd: CustomObjectsApi
) -> None:
    api.create(PLURAL, predictor("a", labels={"tier": "gold"}))
    watch = Collector(
        crd.list_namespaced_custom_object,
        *CRD,
        NS,
        PLURAL,
        label_selector="tier=gold",
        resource_version=str(api.resource_version),
        timeout_seconds=5,
    )

    api.patch(PLURAL, NS, "a", {"metadata": {"labels": {"tier": "bronze"}}})
    api.create(PLURAL, predictor("b"))
    api.patch(PLURAL, NS, "b", {"metadata": {"labels": {"tier": "gold"}}})

    assert watch.take(2) == [("DELETED", "a"), ("ADDED", "b")]
    watch.stop()


def test_watch_from_a_compacted_resource_version_gets_410(
    api: FakeKubeAPI, crd: CustomObjectsApi, api_client: ApiClient
) -> None:
    created = crd.create_namespaced_custom_object(*CRD, NS, PLURAL, predictor("mlp"))
    old_rv = created["metadata"]["resourceVersion"]
    api.patch(PLURAL, NS, "mlp", {"spec": {"copies": 2}})
    api.compact()

    events = Watch().stream(
        crd.list_namespaced_custom_object,
        *CRD,
        NS,
        PLURAL,
        resource_version=old_rv,
        timeout_seconds=5,
    )
    with pytest.raises(ApiException) as expired:
        next(events)  # the expiry comes before any event
    raw = crd.list_namespaced_custom_object(
        *CRD, NS, PLURAL, watch=True, resource_version=old_rv, _preload_content=False
    )
    lines = raw.data.decode().splitlines()

    assert expired.value.status == 410
    assert raw.status == 200 and len(lines) == 1
    assert '"type":"ERROR"' in lines[0] and '"reason":"Expired"' in lines[0]
    assert f"too old resource version: {old_rv} (" in lines[0]


def test_bounded_history_expires_the_oldest_versions() -> None:
    with FakeKubeAPI(history_limit=2) as api, api.client() as client:
        crd = CustomObjectsApi(client)
        first = api.create(PLURAL, predictor("a"))["metadata"]["resourceVersion"]
        for copies in range(1, 4):
            api.patch(PLURAL, NS, "a", {"spec": {"copies": copies}})
        recent = str(api.resource_version - 1)

        with pytest.raises(ApiException) as expired:
            list(
                Watch().stream(
                    crd.list_namespaced_custom_object,
                    *CRD,
                    NS,
                    PLURAL,
                    resource_version=first,
                    timeout_seconds=5,
                )
            )
        watch = Watch()
        for event in watch.stream(
            crd.list_namespaced_custom_object,
            *CRD,
            NS,
            PLURAL,
            resource_version=recent,
            timeout_seconds=5,
        ):
            assert event["raw_object"]["spec"]["copies"] == 3
            watch.stop()

    assert expired.value.status == 410


def test_bookmarks_carry_the_current_resource_version(
    api: FakeKubeAPI, crd: CustomObjectsApi
) -> None:
    api.create(PLURAL, predictor("a"))
    watch = Collector(
        crd.list_namespaced_custom_object,
        *CRD,
        NS,
        PLURAL,
        resource_version=str(api.resource_version),
        allow_watch_bookmarks=True,
        timeout_seconds=5,
    )
    api.wait_for_watches(1)
    api.create(PLURAL, predictor("b"), namespace="other")  # moves the revision, not this watch

    api.send_bookmarks()
    seen = []
    while str(api.resource_version) not in seen:  # periodic ones may come first, none later
        event = watch.next()
        assert event["type"] == "BOOKMARK"
        seen.append(event["raw_object"]["metadata"]["resourceVersion"])

    assert watch.watch.resource_version == str(api.resource_version)
    watch.stop()


def test_drop_watches_cuts_the_stream(api: FakeKubeAPI, crd: CustomObjectsApi) -> None:
    watch = Collector(crd.list_namespaced_custom_object, *CRD, NS, PLURAL, timeout_seconds=5)
    api.wait_for_watches(1)

    assert api.drop_watches() == 1

    assert watch.done.wait(2)
    assert isinstance(watch.error, urllib3.exceptions.ProtocolError)
    # The client sees the cut before the serving thread has deregistered the watch.
    wait_until(lambda: api.watch_count() == 0, timeout=2, what="the cut watch deregistered")


def test_graceful_drop_ends_the_stream(api: FakeKubeAPI, crd: CustomObjectsApi) -> None:
    watch = Collector(crd.list_namespaced_custom_object, *CRD, NS, PLURAL, timeout_seconds=5)
    api.wait_for_watches(1)

    api.drop_watches(graceful=True)

    assert watch.done.wait(2) and watch.error is None
    assert crd.list_namespaced_custom_object(*CRD, NS, PLURAL)["items"] == []


def test_timeout_seconds_ends_the_stream(api: FakeKubeAPI, crd: CustomObjectsApi) -> None:
    watch = Collector(crd.list_namespaced_custom_object, *CRD, NS, PLURAL, timeout_seconds=2)
    api.wait_for_watches(1)
    api.create(PLURAL, predictor("a"))

    assert watch.take(1) == [("ADDED", "a")]  # open and delivering until then...
    assert watch.done.wait(30) and watch.error is None  # ...then ended by the server alone
    wait_until(lambda: api.watch_count() == 0, what="the ended watch to be forgotten")
    api.create(PLURAL, predictor("b"))  # the connection is kept alive and reused
    assert crd.list_namespaced_custom_object(*CRD, NS, PLURAL)["items"][0]["metadata"]["name"]
    assert api.accepted_connections() == 1


def test_close_ends_open_watches_promptly() -> None:
    api = FakeKubeAPI().start()
    client = api.client()
    watch = Collector(
        CustomObjectsApi(client).list_namespaced_custom_object,
        *CRD,
        NS,
        PLURAL,
        timeout_seconds=30,
    )
    api.wait_for_watches(1)

    api.close()

    # Ended by close (its own timeout is 30 s away), with nothing the client must time out on.
    assert watch.done.wait(10)
    client.close()


# --- fault injection and records ----------------------------------------------------------------


def test_fail_next_answers_the_error_instead(api: FakeKubeAPI, crd: CustomObjectsApi) -> None:
    api.create(PLURAL, predictor("mlp"))
    api.fail_next("GET", r"/predictors$", 500, watch=False)
    api.fail_next("PATCH", r"/status$", 409, times=2)

    with pytest.raises(ApiException) as list_failed:
        crd.list_namespaced_custom_object(*CRD, NS, PLURAL)
    listed = crd.list_namespaced_custom_object(*CRD, NS, PLURAL)
    conflicts = []
    for _ in range(3):
        try:
            crd.patch_namespaced_custom_object_status(
                *CRD, NS, PLURAL, "mlp", {"status": {"phase": "Ready"}}
            )
        except ApiException as exc:
            conflicts.append(exc.status)

    assert status_of(list_failed) == (500, "InternalError")
    assert [(f.method, f.code, f.watch) for f in api.fired] == [
        ("GET", 500, False),
        ("PATCH", 409, False),
        ("PATCH", 409, False),
    ]
    assert api.unfired() == []
    assert len(listed["items"]) == 1
    assert conflicts == [409, 409]
    assert api.get(PLURAL, NS, "mlp")["status"] == {"phase": "Ready"}
    status_writes = [
        r for r in api.requests if r.method == "PATCH" and r.path.endswith("/mlp/status")
    ]
    assert len(status_writes) == 3
    assert status_writes[0].content_type == "application/merge-patch+json"


def test_helpers_act_like_kubectl(api: FakeKubeAPI) -> None:
    api.create(PLURAL, {"metadata": {"name": "a"}, "spec": {}, "status": {"phase": "x"}})
    api.patch(PLURAL, NS, "a", {"status": {"phase": "Ready"}}, subresource="status")
    api.patch(PLURAL, NS, "a", [{"op": "add", "path": "/spec/copies", "value": 2}])

    with pytest.raises(KubeError) as exists:
        api.create(PLURAL, {"metadata": {"name": "a"}})

    stored = api.objects(PLURAL, NS)
    assert [o["metadata"]["name"] for o in stored] == ["a"]
    assert stored[0]["status"] == {"phase": "Ready"} and stored[0]["spec"] == {"copies": 2}
    assert exists.value.code == 409
    assert api.delete(PLURAL, NS, "a")["metadata"]["name"] == "a"
    assert api.get(PLURAL, NS, "a") is None


# --- leases -------------------------------------------------------------------------------------


def test_lease_round_trip_with_a_stale_conflict(
    api: FakeKubeAPI, leases: CoordinationV1Api
) -> None:
    acquired = datetime.datetime(2026, 11, 28, 10, 0, 0, 123456, tzinfo=datetime.UTC)
    lease = V1Lease(
        metadata=V1ObjectMeta(name="mesh-controller", namespace=NS),
        spec=V1LeaseSpec(
            holder_identity="pod-a",
            lease_duration_seconds=15,
            acquire_time=acquired,
            renew_time=acquired,
            lease_transitions=0,
        ),
    )

    created = leases.create_namespaced_lease(NS, lease)
    read = leases.read_namespaced_lease("mesh-controller", NS)
    read.spec.renew_time = acquired + datetime.timedelta(seconds=5)
    renewed = leases.replace_namespaced_lease("mesh-controller", NS, read)
    created.spec.holder_identity = "pod-b"
    with pytest.raises(ApiException) as stale:
        leases.replace_namespaced_lease("mesh-controller", NS, created)
    with pytest.raises(ApiException) as taken:
        leases.create_namespaced_lease(NS, lease)

    assert read.spec.holder_identity == "pod-a" and read.spec.lease_duration_seconds == 15
    assert read.spec.acquire_time == acquired
    assert renewed.spec.renew_time == acquired + datetime.timedelta(seconds=5)
    assert renewed.metadata.resource_version != created.metadata.resource_version
    assert status_of(stale) == (409, "Conflict")
    assert status_of(taken) == (409, "AlreadyExists")
    stored = api.get("leases", NS, "mesh-controller")
    assert stored["spec"]["acquireTime"] == "2026-11-28T10:00:00.123456Z"
    assert stored["spec"]["renewTime"] == "2026-11-28T10:00:05.123456Z"
    assert stored["spec"]["holderIdentity"] == "pod-a"


def test_missing_lease_reads_404(leases: CoordinationV1Api) -> None:
    with pytest.raises(ApiException) as missing:
        leases.read_namespaced_lease("nobody", NS)

    assert status_of(missing) == (404, "NotFound")


def test_the_scale_subresource_reads_and_writes_a_deployments_replicas() -> None:
    from kubernetes.client import AppsV1Api, V1ObjectMeta, V1Scale, V1ScaleSpec

    from tests.kube.resources import POOL_RESOURCES

    body = {
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": {}},
    }
    with FakeKubeAPI(POOL_RESOURCES) as server, server.client() as client:
        apps = AppsV1Api(client)
        apps.create_namespaced_deployment(NS, body)
        scale = apps.read_namespaced_deployment_scale("web", NS)
        assert (scale.spec.replicas, scale.status.selector) == (1, "app=web")
        generation = server.get("deployments", NS, "web")["metadata"]["generation"]  # type: ignore[index]

        stale = V1Scale(
            metadata=V1ObjectMeta(name="web", resource_version=scale.metadata.resource_version),
            spec=V1ScaleSpec(replicas=3),
        )
        written = apps.replace_namespaced_deployment_scale("web", NS, stale)
        assert written.spec.replicas == 3
        stored = server.get("deployments", NS, "web")
        assert stored is not None
        assert (
            stored["spec"]["replicas"] == 3 and stored["metadata"]["generation"] == generation + 1
        )

        with pytest.raises(ApiException) as conflict:  # the same, now stale, resourceVersion
            apps.replace_namespaced_deployment_scale("web", NS, stale)
        assert conflict.value.status == 409

        apps.patch_namespaced_deployment_scale("web", NS, {"spec": {"replicas": 0}})
        assert server.get("deployments", NS, "web")["spec"]["replicas"] == 0  # type: ignore[index]
        with pytest.raises(ApiException) as invalid:
            apps.patch_namespaced_deployment_scale("web", NS, {"spec": {"replicas": -1}})
        assert invalid.value.status == 422
        with pytest.raises(ApiException) as no_scale:  # only resources that have one
            CustomObjectsApi(client).get_namespaced_custom_object_scale(
                GROUP, "v1beta1", NS, "inferenceservices", "x"
            )
        assert no_scale.value.status == 404
