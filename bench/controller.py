"""Benchmark the Kubernetes controller: what the Kubernetes side adds to registering models.

    .venv/bin/python bench/controller.py             # 200 Predictors, about 1.5 minutes
    .venv/bin/python bench/controller.py --quick     # 50 Predictors

One local mesh (`mesh.up.local_mesh`: etcd, one pod with its puller, a router, as child
processes) and the fake Kubernetes API server of the tests (tests/kube/apiserver.py: no real
one can run here), in this process.

1. **Baseline: the management calls alone.** For N model ids, one after another, what the
   controller does for a new Predictor, made directly: RegisterModel, EnsureLoaded (0.5 s
   deadline, as the controller's), SetVModel, GetVModelStatus, GetModelStatus; then wait until
   every model has a loaded copy.
2. **The controller.** N Predictors created at once in the API server (other model files, the
   same kind of model), the controller started (one replica, no Lease, poll 0.2 s), timed until
   every Predictor's status says Loaded. On top of the same management calls it lists and
   watches, patches a finalizer and writes each status.
3. **Steady state.** With nothing changing, three resyncs (every 2 s): reconciles per second and
   the mean time of one (the controller's own histogram), and status writes (should be none).

Reported: both wall times and their ratio (controller / baseline), per Predictor. Both phases
load models of the same size on the same pod, one after another, on the same machine, seconds
apart, so the ratio is the Kubernetes side's cost; the absolute times are this machine's.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.router import management, output_to, running_mesh  # noqa: E402
from mesh import examples  # noqa: E402
from mesh.controller.controller import Controller, ControllerPolicy  # noqa: E402
from mesh.controller.kube import PredictorApi  # noqa: E402
from mesh.controller.meshapi import MeshApi  # noqa: E402
from mesh.controller.metrics import ControllerMetrics  # noqa: E402
from mesh.gen import management_pb2 as mpb  # noqa: E402
from tests.kube.apiserver import FakeKubeAPI  # noqa: E402

NAMESPACE = "bench"


def baseline(stub: Any, n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        model_id = f"base-{i}"
        stub.RegisterModel(mpb.RegisterModelRequest(
            model_id=model_id, format="xgboost", storage_path=f"base/{i}"))  # fmt: skip
        with contextlib.suppress(grpc.RpcError):
            stub.EnsureLoaded(mpb.EnsureLoadedRequest(model_id=model_id), timeout=0.5)
        stub.SetVModel(mpb.SetVModelRequest(vmodel_id=f"vbase-{i}", target_model_id=model_id))
        stub.GetVModelStatus(mpb.GetVModelStatusRequest(vmodel_id=f"vbase-{i}"))
        stub.GetModelStatus(mpb.GetModelStatusRequest(model_id=model_id))
    ids = {f"base-{i}" for i in range(n)}
    while True:
        listed = stub.ListModels(mpb.ListModelsRequest()).models
        if all(m.state == "LOADED" for m in listed if m.model_id in ids):
            return time.perf_counter() - started
        time.sleep(0.05)


def with_controller(
    api: FakeKubeAPI, router: str, n: int, registry: Any
) -> tuple[float, Controller, MeshApi]:
    for i in range(n):
        api.create("predictors", {
            "apiVersion": "serving.kserve.io/v1alpha1", "kind": "Predictor",
            "metadata": {"name": f"p-{i}", "namespace": NAMESPACE},
            "spec": {"modelType": {"name": "xgboost"}, "path": f"ctl/{i}"},
        })  # fmt: skip
    mesh = MeshApi(router)
    policy = ControllerPolicy(resync=2.0, poll=0.2, watch_timeout=60)
    controller = Controller(
        PredictorApi(api.client(), NAMESPACE), mesh, policy, None, ControllerMetrics(registry)
    )
    started = time.perf_counter()
    controller.start()
    while True:
        objs = api.objects("predictors", NAMESPACE)
        if all((o.get("status") or {}).get("activeModelState") == "Loaded" for o in objs):
            return time.perf_counter() - started, controller, mesh
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="50 Predictors")
    parser.add_argument("-n", type=int, help="Predictors (default 200)")
    args = parser.parse_args()
    n = args.n or (50 if args.quick else 200)
    from prometheus_client import CollectorRegistry

    work = ROOT / "bench" / "out" / "controller"
    storage = work / "models"
    for group in ("base", "ctl"):
        for i in range(n):
            if not (storage / group / str(i)).exists():
                examples.xgboost_booster(storage / group / str(i), n_trees=5)
    log = work / "mesh.log"
    with running_mesh(storage, 1, "2Gi", log) as info, FakeKubeAPI() as api:
        _, stub = management(info.router.address)
        base = baseline(stub, n)
        registry = CollectorRegistry()
        took, controller, mesh = with_controller(api, info.router.address, n, registry)
        try:
            count = registry.get_sample_value("mesh_controller_reconcile_seconds_count") or 0
            total = registry.get_sample_value("mesh_controller_reconcile_seconds_sum") or 0
            writes = registry.get_sample_value("mesh_controller_status_writes_total") or 0
            time.sleep(6.5)  # three resyncs
            count2 = registry.get_sample_value("mesh_controller_reconcile_seconds_count") or 0
            total2 = registry.get_sample_value("mesh_controller_reconcile_seconds_sum") or 0
            writes2 = registry.get_sample_value("mesh_controller_status_writes_total") or 0
        finally:
            with output_to(log):
                controller.stop()
                mesh.close()
    print(f"{n} Predictors, one pod, XGBoost models of 5 trees (machine: 2 cores)")
    print(f"  baseline (management calls alone): {base:7.2f} s  {base / n * 1000:6.1f} ms each")
    print(f"  through the controller:            {took:7.2f} s  {took / n * 1000:6.1f} ms each")
    print(f"  ratio controller / baseline:       {took / base:7.2f}x")
    print(f"  reconciles until all Loaded:       {int(count)} ({int(writes)} status writes)")
    steady = count2 - count
    if steady:
        print(f"  steady state, 6.5 s: {int(steady)} reconciles, "
              f"{(total2 - total) / steady * 1000:.1f} ms each, "
              f"{int(writes2 - writes)} status writes")  # fmt: skip


if __name__ == "__main__":
    main()
