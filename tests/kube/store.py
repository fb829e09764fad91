"""Store semantics of the API server without HTTP: one global resourceVersion, create, get,
list (selectors, ``limit``/``continue``), replace and patch with optimistic concurrency, the
status subresource, ``generation``, no-op updates not written, graceful deletion with
finalizers and delete preconditions, and the bounded event history that watches read.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import random
import threading
import uuid
from collections import deque
from typing import Any

from tests.kube.errors import KubeError, conflict, details_of, invalid, not_found
from tests.kube.patch import json_equal, json_patch, merge_patch
from tests.kube.resources import Obj, Resource, normalise_times, now, rfc3339, spec_of
from tests.kube.selector import Selector
from tests.kube.watch import Event, Watch


def sort_key(item: tuple[tuple[Resource, str | None, str], Obj]) -> tuple[str, str]:
    (_, ns, name), _ = item
    return (ns or "", name)


def scale_of(res: Resource, obj: Obj) -> Obj:
    """The object's autoscaling/v1 Scale: spec.replicas, status.replicas, the selector."""
    meta = obj["metadata"]
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    labels = (spec.get("selector") or {}).get("matchLabels") or {}
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if k in meta
        },
        "spec": {"replicas": spec.get("replicas", 0)},
        "status": {
            "replicas": status.get("replicas", 0),
            "selector": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
        },
    }


_log = logging.getLogger(__name__)

_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"
_CONTINUE = "continue"


class Store:
    """The objects and their history; every method but the constructor runs under ``lock``.

    ::

        store = Store((PREDICTORS,))
        with store.lock:
            store.create(PREDICTORS, "default", {"apiVersion": ..., "kind": "Predictor", ...})
    """

    def __init__(
        self,
        resources: tuple[Resource, ...],
        *,
        history_limit: int = 1000,
        max_watch_backlog: int = 10_000,
    ) -> None:
        self.resources = resources
        self.history_limit = history_limit
        self.max_watch_backlog = max_watch_backlog
        self.lock = threading.Lock()
        self.rv = 1
        self.compacted_rv = 0  # a watch must start at or after this resourceVersion
        self.objects: dict[tuple[Resource, str | None, str], Obj] = {}
        self.history: deque[Event] = deque()
        self.watches: set[Watch] = set()
        self.closed = False

    # --- store (all under self.lock) ----------------------------------------------------------

    def resource(self, plural: str) -> Resource:
        matches = [r for r in self.resources if r.plural == plural]
        if len(matches) != 1:
            raise KeyError(f"{len(matches)} served resources named {plural!r}")
        return matches[0]

    def next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def emit(self, ev: Event) -> None:
        self.history.append(ev)
        while len(self.history) > self.history_limit:
            self.compacted_rv = self.history.popleft().rv
        for w in self.watches:
            if w.ended:
                continue
            translated = w.translate(ev)
            if translated is None:
                continue
            if w.queue.qsize() >= self.max_watch_backlog:
                _log.warning("fake kube-apiserver: ending a watch that fell behind")
                w.end(graceful=True)
            else:
                w.queue.put(("event", *translated))

    def check_body(self, res: Resource, namespace: str | None, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise KubeError(400, "the request body must be a JSON object")
        api_version, kind = body.get("apiVersion"), body.get("kind")
        if res.builtin:
            api_version = api_version or res.api_version
            kind = kind or res.kind
        if not kind:
            raise KubeError(400, "Object 'Kind' is missing in the request body")
        if api_version != res.api_version:
            raise KubeError(
                400,
                f"the API version in the data ({api_version}) does not match the expected API "
                f"version ({res.api_version})",
            )
        if kind != res.kind:
            raise KubeError(
                400,
                f'{kind} in version "{res.version}" cannot be handled as a {res.kind}: '
                "the kind in the body does not match the URL",
            )
        body["apiVersion"], body["kind"] = api_version, kind
        meta = body.get("metadata")
        if meta is None:
            meta = body["metadata"] = {}
        if not isinstance(meta, dict):
            raise KubeError(400, "metadata must be a JSON object")
        if res.namespaced:
            if meta.get("namespace") not in (None, "", namespace):
                raise KubeError(
                    400,
                    "the namespace of the provided object does not match the namespace sent on "
                    "the request",
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        finalizers = meta.get("finalizers")
        if finalizers is not None and (
            not isinstance(finalizers, list) or not all(isinstance(f, str) for f in finalizers)
        ):
            raise invalid(res, meta.get("name", ""), "metadata.finalizers", "must be strings")
        normalise_times(res, body)
        return meta

    def create(self, res: Resource, namespace: str | None, body: Any) -> Obj:
        meta = self.check_body(res, namespace, body)
        name = meta.get("name")
        if not name:
            prefix = meta.get("generateName")
            if not prefix:
                raise invalid(
                    res, "", "metadata.name", "Required value: name or generateName is required"
                )
            while True:
                name = prefix + "".join(random.choice(_NAME_CHARS) for _ in range(5))
                if (res, namespace, name) not in self.objects:
                    break
            meta["name"] = name
        if not isinstance(name, str):
            raise invalid(res, str(name), "metadata.name", "must be a string")
        if meta.get("resourceVersion"):
            raise KubeError(500, "resourceVersion should not be set on objects to be created")
        key = (res, namespace, name)
        if key in self.objects:
            raise KubeError(
                409,
                f'{res.group_resource} "{name}" already exists',
                reason="AlreadyExists",
                details=details_of(res, name),
            )
        if res.has_status:
            body.pop("status", None)
        for system in ("deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
            meta.pop(system, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = rfc3339(now())
        if res.tracks_generation:
            meta["generation"] = 1
        rv = self.next_rv()
        meta["resourceVersion"] = str(rv)
        obj: Obj = body
        self.objects[key] = obj
        self.emit(Event(rv, "ADDED", res, namespace, obj, None))
        return obj

    def replace(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        body: Any,
        subresource: str | None,
        *,
        from_patch: bool = False,
    ) -> tuple[int, Obj]:
        """Returns (HTTP code, object)."""
        if subresource == "scale":
            return 200, self.replace_scale(res, namespace, name, body)
        current = self.objects.get((res, namespace, name))
        if current is None:
            if res.builtin and subresource is None and not from_patch:
                meta = self.check_body(res, namespace, body)
                meta.pop("resourceVersion", None)
                meta.setdefault("name", name)
                return 201, self.create(res, namespace, body)
            raise not_found(res, name)
        meta = self.check_body(res, namespace, body)
        if meta.get("name", name) != name:
            raise KubeError(
                400,
                f"the name of the object ({meta.get('name')}) does not match the name on the URL "
                f"({name})",
            )
        old_meta = current["metadata"]
        rv = meta.get("resourceVersion")
        if rv in (None, ""):
            if not (res.builtin or from_patch):
                raise invalid(
                    res,
                    name,
                    "metadata.resourceVersion",
                    "Invalid value: 0x0: must be specified for an update",
                )
        elif rv != old_meta["resourceVersion"]:
            raise conflict(res, name)
        if meta.get("uid") not in (None, "", old_meta["uid"]):
            raise KubeError(
                409,
                f"Precondition failed: UID in precondition: {meta['uid']}, UID in object meta: "
                f"{old_meta['uid']}",
                reason="Conflict",
            )

        if subresource == "status":
            new = copy.deepcopy(current)
            if "status" in body:
                new["status"] = body["status"]
                if res.status_fields is not None and isinstance(new["status"], dict):
                    kept = res.status_fields
                    new["status"] = {k: v for k, v in new["status"].items() if k in kept}
            else:
                new.pop("status", None)
        else:
            new = body
            if res.has_status:
                if "status" in current:
                    new["status"] = copy.deepcopy(current["status"])
                else:
                    new.pop("status", None)
            new_meta = new["metadata"]
            for system in (
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ):
                if system in old_meta:
                    new_meta[system] = old_meta[system]
                else:
                    new_meta.pop(system, None)
            new_meta["name"] = name
            if res.tracks_generation and spec_of(new, res) != spec_of(current, res):
                new_meta["generation"] = old_meta.get("generation", 0) + 1
            if "deletionTimestamp" in old_meta:
                before = old_meta.get("finalizers") or []
                added = [f for f in new_meta.get("finalizers") or [] if f not in before]
                if added:
                    raise invalid(
                        res,
                        name,
                        "metadata.finalizers",
                        "Forbidden: no new finalizers can be added if the object is being "
                        f"deleted, found new finalizers {added}",
                    )
        new["metadata"]["resourceVersion"] = old_meta["resourceVersion"]
        if json_equal(new, current):
            return 200, current  # nothing changed: the real server writes nothing either

        if "deletionTimestamp" in new["metadata"] and not new["metadata"].get("finalizers"):
            return 200, self.remove(res, namespace, name, current)
        rv_new = self.next_rv()
        new["metadata"]["resourceVersion"] = str(rv_new)
        self.objects[(res, namespace, name)] = new
        self.emit(Event(rv_new, "MODIFIED", res, namespace, new, current))
        return 200, new

    def patch(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        content_type: str | None,
        raw: bytes,
        subresource: str | None,
    ) -> Obj:
        media = (content_type or "").split(";", 1)[0].strip().lower()
        kinds = {"application/json-patch+json": "json", "application/merge-patch+json": "merge"}
        if res.builtin:
            kinds["application/strategic-merge-patch+json"] = "merge"
        kind = kinds.get(media)
        if kind is None:
            accepted = ", ".join(kinds)
            raise KubeError(
                415,
                f"the body of the request was in an unknown format - accepted media types "
                f"include: {accepted} (the fake has no server-side apply)",
            )
        try:
            patch = json.loads(raw or b"null")
        except ValueError as exc:
            raise KubeError(400, f"the patch is not valid JSON: {exc}") from exc
        current = self.objects.get((res, namespace, name))
        if current is None:
            raise not_found(res, name)
        if subresource == "scale":  # the patch applies to the Scale, not to the object
            current = scale_of(res, current)
        if kind == "merge":
            if not isinstance(patch, dict):
                raise KubeError(
                    400,
                    "a merge patch must be a JSON object (a JSON patch list needs the content "
                    "type application/json-patch+json)",
                )
            patched = merge_patch(copy.deepcopy(current), patch)
        else:
            patched = json_patch(current, patch)
        _, out = self.replace(res, namespace, name, patched, subresource, from_patch=True)
        return out

    def replace_scale(self, res: Resource, namespace: str | None, name: str, body: Any) -> Obj:
        """Write a Scale: its spec.replicas becomes the object's (a new generation), under the
        same optimistic concurrency as the object (the Scale carries its resourceVersion)."""
        current = self.objects.get((res, namespace, name))
        if current is None:
            raise not_found(res, name)
        if not isinstance(body, dict):
            raise KubeError(400, "the request body must be a JSON object")
        if (body.get("apiVersion"), body.get("kind")) not in (
            ("autoscaling/v1", "Scale"),
            (None, None),
        ):
            raise KubeError(400, "a scale write takes an autoscaling/v1 Scale")
        replicas = (body.get("spec") or {}).get("replicas", 0)
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
            raise invalid(res, name, "spec.replicas", f"Invalid value: {replicas!r}: must be >= 0")
        meta = body.get("metadata") or {}
        if meta.get("name") not in (None, "", name):
            raise KubeError(400, "the name of the Scale does not match the name on the URL")
        new = copy.deepcopy(current)
        new.setdefault("spec", {})["replicas"] = replicas
        new["metadata"]["resourceVersion"] = meta.get("resourceVersion") or ""
        _, out = self.replace(res, namespace, name, new, None, from_patch=True)
        return scale_of(res, out)

    def delete(
        self, res: Resource, namespace: str | None, name: str, options: Obj
    ) -> tuple[int, Obj]:
        current = self.objects.get((res, namespace, name))
        if current is None:
            raise not_found(res, name)
        meta = current["metadata"]
        pre = options.get("preconditions") or {}
        if pre.get("uid") not in (None, meta["uid"]):
            raise KubeError(
                409,
                f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: "
                f"{meta['uid']}",
            )
        if pre.get("resourceVersion") not in (None, meta["resourceVersion"]):
            raise KubeError(
                409,
                f"Precondition failed: ResourceVersion in precondition: {pre['resourceVersion']}, "
                f"ResourceVersion in object meta: {meta['resourceVersion']}",
            )
        if meta.get("finalizers"):
            if "deletionTimestamp" in meta:
                return 200, current  # already being deleted: nothing to write
            new = copy.deepcopy(current)
            new_meta = new["metadata"]
            new_meta["deletionTimestamp"] = rfc3339(now())
            new_meta["deletionGracePeriodSeconds"] = 0
            if new_meta.get("generation", 0) > 0:
                new_meta["generation"] += 1
            rv = self.next_rv()
            new_meta["resourceVersion"] = str(rv)
            self.objects[(res, namespace, name)] = new
            self.emit(Event(rv, "MODIFIED", res, namespace, new, current))
            return 200, new
        gone = self.remove(res, namespace, name, current)
        if res.builtin:
            details = {"name": name, "group": res.group, "kind": res.plural, "uid": meta["uid"]}
            return 200, {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": details,
            }
        return 200, gone

    def remove(self, res: Resource, namespace: str | None, name: str, last: Obj) -> Obj:
        """Delete for good: the DELETED event carries the last stored state at a new revision."""
        del self.objects[(res, namespace, name)]
        rv = self.next_rv()
        gone = copy.deepcopy(last)
        gone["metadata"]["resourceVersion"] = str(rv)
        self.emit(Event(rv, "DELETED", res, namespace, gone, None))
        return gone

    def list(
        self, res: Resource, namespace: str | None, selector: Selector, query: dict[str, str]
    ) -> Obj:
        list_rv = self.rv
        start = ""
        token = query.get(_CONTINUE)
        if token:
            try:
                decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
                list_rv, start = int(decoded["rv"]), str(decoded["start"])
            except (ValueError, KeyError, TypeError) as exc:
                raise KubeError(400, "invalid continue token") from exc
        items = [
            obj
            for (r, ns, name), obj in sorted(self.objects.items(), key=sort_key)
            if r == res
            and (namespace is None or ns == namespace)
            and f"{ns or ''}/{name}" > start
            and selector.matches(obj)
        ]
        meta: Obj = {"resourceVersion": str(list_rv)}
        limit = int(query.get("limit") or 0)
        if limit > 0 and len(items) > limit:
            last = items[limit - 1]["metadata"]
            key = f"{last.get('namespace') or ''}/{last['name']}"
            meta[_CONTINUE] = base64.urlsafe_b64encode(
                json.dumps({"rv": list_rv, "start": key}).encode()
            ).decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        return {
            "apiVersion": res.api_version,
            "kind": res.list_kind,
            "metadata": meta,
            "items": copy.deepcopy(items),
        }
