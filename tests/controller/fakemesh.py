"""An in-memory stand-in for the routers' management API, for the controller's Kubernetes-side
tests (watches, conflicts, leader election) where no model needs to load. It passes the contract
in tests/controller/test_mesh_contract.py, which MeshApi passes against a real router."""

from __future__ import annotations

import threading

from mesh.controller.meshapi import PoolsView
from mesh.controller.predictor import ModelView, PredictorSpec, VModelView
from mesh.errors import ModelNotFound


class FakeMesh:
    def __init__(self) -> None:
        self.models: dict[str, PredictorSpec] = {}
        self.vmodels: dict[str, str] = {}
        self.calls: list[tuple[str, str]] = []
        # Pods that drain, with the models each holds (what GetMeshStatus reports).
        self.draining: dict[str, int] = {}
        # What GetMeshStatus reports of the pools (a test sets it).
        self.pool_view = PoolsView()
        self._lock = threading.Lock()

    def _call(self, method: str, arg: str) -> None:
        with self._lock:
            self.calls.append((method, arg))

    def pools(self) -> PoolsView:
        return self.pool_view

    def draining_pods(self) -> dict[str, int]:
        return dict(self.draining)

    def model(self, model_id: str) -> ModelView | None:
        if model_id not in self.models:
            return None
        return ModelView(model_id, "LOADED", loaded_copies=1)

    def register(self, spec: PredictorSpec) -> None:
        self._call("register", spec.model_id)
        self.models[spec.model_id] = spec

    def start_loading(self, model_id: str) -> None:
        self._call("start_loading", model_id)

    def unregister(self, model_id: str) -> bool:
        self._call("unregister", model_id)
        return self.models.pop(model_id, None) is not None

    def model_ids(self) -> list[str]:
        return sorted(self.models)

    def vmodel(self, name: str) -> VModelView | None:
        target = self.vmodels.get(name)
        return VModelView(target, target, "UP_TO_DATE") if target else None

    def set_vmodel(self, name: str, target: str) -> None:
        self._call("set_vmodel", f"{name}={target}")
        if target not in self.models:  # as the router refuses it
            raise ModelNotFound(f"vmodel {name!r}: target model {target!r} is not registered")
        self.vmodels[name] = target

    def delete_vmodel(self, name: str) -> bool:
        self._call("delete_vmodel", name)
        return self.vmodels.pop(name, None) is not None

    def close(self) -> None:
        pass
