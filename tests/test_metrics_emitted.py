"""Every metric that docs/ and the Grafana board name is emitted after a scripted scenario.

The names are read from the documents themselves (docs/*.md, README.md, deploy/grafana/*.json),
so a metric documented later is checked too. The scenario runs a real mesh in this process:
etcd, a router that is leader, one pod with a small capacity and its puller (a `file` entry and
an HTTP entry on a server that fails once), a stub pod answering NOT_FOUND, and the controller
on the test Kubernetes API server. It does what makes each documented series move: misses,
hits, evictions, a load that fails, a retry, a puller cache hit, miss, retry, failure and
eviction, a Predictor reconciled, a dropped watch, on a second pod (a fake device with a host
tier, outside the mesh) demotions, a promotion, host-tier evictions and a recycle, and a
generative model streamed through the router from a pod of its own.

"Emitted" means: a counter or histogram has counted something (its _total or _count above 0);
a gauge has a sample (0 can be its true value). Names that the prometheus-adapter derives
(`as:` in deploy/examples/prometheus-adapter-values.yaml) are Prometheus's, not ours.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import yaml
from prometheus_client import CollectorRegistry

from mesh import examples
from mesh.controller.meshapi import MeshApi
from mesh.gen import management_pb2 as mpb
from mesh.gen import runtime_pb2 as rpb
from mesh.pod.devices import FakeDevice
from mesh.puller.client import PullerClient
from mesh.puller.server import PullerServer
from mesh.runtimes.registry import RuntimeRegistry
from mesh.storageref import StorageRef
from tests.cluster.conftest import etcd, prefix  # noqa: F401  (shared fixtures)
from tests.cluster.etcd_server import EtcdServer
from tests.controller.conftest import NAMESPACE, build_controller, predictor
from tests.fakes import CountingPuller, DeviceRuntime
from tests.helpers import infer_request, running_pod, running_router, wait_until
from tests.kube.apiserver import FakeKubeAPI
from tests.kube.resources import POOL_RESOURCES
from tests.llm.conftest import llm_dir  # noqa: F401  (shared fixture)
from tests.llm.test_pod import _inputs, _stream
from tests.puller.conftest import settings as puller_settings
from tests.puller.servers import Fault, FaultServer
from tests.router.test_retries import StubPod, publish, stub  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20
X = np.ones((1, 64), np.float32)
WIDE = 4096  # inputs of the TorchScript MLP: 4096 x 32 FP32 weights, 0.5 MiB


def documented_metrics() -> set[str]:
    texts = [p.read_text() for p in (*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md")]
    texts += [p.read_text() for p in sorted((ROOT / "deploy" / "grafana").glob("*.json"))]
    names = set()
    for text in texts:
        # A metric: mesh_<component>_..., not a file name such as the wheel's
        # mesh_serving-*.whl, nor a request parameter such as ModelStreamInfer's mesh_chat.
        metric = r"\bmesh_(?:pod|router|puller|controller|cluster)_[a-z0-9_]*[a-z0-9]\b(?!-)"
        for name in re.findall(metric, text):
            names.add(re.sub(r"_(bucket|count|sum)$", "", name))
    adapter = yaml.safe_load((ROOT / "deploy/examples/prometheus-adapter-values.yaml").read_text())
    derived = {rule["name"]["as"] for rule in adapter["rules"]["custom"]}
    return names - derived


def samples(registries: list[CollectorRegistry]) -> dict[str, float]:
    """Sample name -> sum over label sets, across the registries."""
    found: dict[str, float] = {}
    for registry in registries:
        for family in registry.collect():
            for sample in family.samples:
                found[sample.name] = found.get(sample.name, 0.0) + sample.value
    return found


def unemitted(names: set[str], found: dict[str, float]) -> list[str]:
    missing = []
    for name in sorted(names):
        if name + "_count" in found:  # a histogram: observed at least once
            ok = found[name + "_count"] > 0
        elif name.endswith("_total"):  # a counter: counted something
            ok = found.get(name, 0.0) > 0
        else:  # a gauge: present
            ok = name in found
        if not ok:
            missing.append(name)
    return missing


def test_the_documents_name_the_metrics_this_test_checks() -> None:
    names = documented_metrics()
    assert len(names) >= 35  # the parse found the documents' names...
    assert "mesh_router_requests_total" in names  # ...the router's request metrics among them
    assert "mesh_pod_used_ratio" not in names  # ...and left the adapter's derived names out


@contextmanager
def running_puller(settings: Any) -> Iterator[PullerServer]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-puller-loop", daemon=True)
    thread.start()
    server = PullerServer(settings)
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.aclose(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.mark.slow
def test_every_documented_metric_is_emitted_after_a_scenario(
    etcd: EtcdServer,  # noqa: F811
    prefix: str,  # noqa: F811
    model_dir: Path,
    llm_dir: Path,  # noqa: F811
    tmp_path: Path,
    stub: StubPod,  # noqa: F811
) -> None:
    storage = tmp_path / "storage"
    shutil.copytree(model_dir / "mlp", storage / "mlp")
    examples.torchscript_mlp(storage / "wide", n_in=WIDE)
    shutil.copytree(model_dir / "corrupt", storage / "corrupt")
    for name in ("big-1.bin", "big-2.bin"):
        (storage / name).write_bytes(np.random.default_rng(0).bytes(MIB + MIB // 4))
    web = FaultServer().start()
    web.put("models/m.onnx", (model_dir / "mlp" / "model.onnx").read_bytes())
    entries = {
        "default": {"type": "file", "root": str(storage)},
        "web": {"type": "http", "url": f"{web.url}/models"},
    }
    sockets = Path(f"/tmp/mesh-metrics-{tmp_path.name[-12:]}")
    sockets.mkdir(exist_ok=True)
    config = puller_settings(
        tmp_path, entries, cache_bytes=3 * MIB, listen=f"unix:{sockets}/puller.sock"
    )

    def stale(context: Any) -> bytes:
        context.abort(grpc.StatusCode.NOT_FOUND, "model 'stale' is not loaded here")

    stub.infer = stale
    controller_registry = CollectorRegistry()
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, sockets, True)
        stack.callback(web.stop)
        puller = stack.enter_context(running_puller(config))
        pod = stack.enter_context(
            running_pod(
                artifacts=PullerClient(puller.address, timeout=60),
                etcd=etcd.url,
                etcd_prefix=prefix,
                pod_id="pod-0",
                lease_ttl=5,
                capacity=2 * MIB,  # a copy of the MLP measures 0.2-1.2 MiB: evictions
            )
        )
        router = stack.enter_context(
            running_router(etcd=etcd.url, etcd_prefix=prefix, leader_interval=0.3)
        )
        register = router.management.RegisterModel
        small = mpb.ModelOptions(size_estimate=MIB // 4)
        # A TorchScript model whose parameters alone are 0.5 MiB (torch counts them, so the pod
        # charges at least that whatever RSS says): four cannot share the 2 MiB pod.
        for i in range(5):
            register(mpb.RegisterModelRequest(model_id=f"m{i}", format="torch",
                                              storage_path="wide", options=small))  # fmt: skip
        wide = {"x": np.ones((1, WIDE), np.float32)}
        for i in range(5):  # each a miss; the small pod evicts as it goes
            router.v2.ModelInfer(infer_request(f"m{i}", **wide), timeout=30)
        router.v2.ModelInfer(infer_request("m4", **wide), timeout=30)  # a hit
        batching = mpb.ModelOptions(size_estimate=MIB // 4, runtime_options={"batch.max_size": "4"})
        register(mpb.RegisterModelRequest(model_id="batched", format="onnx",
                                          storage_path="mlp", options=batching))  # fmt: skip
        router.v2.ModelInfer(infer_request("batched", input=X), timeout=30)
        register(mpb.RegisterModelRequest(model_id="broken", format="onnx",
                                          storage_path="corrupt", options=small))  # fmt: skip
        with pytest.raises(grpc.RpcError):
            router.v2.ModelInfer(infer_request("broken", input=X), timeout=30)
        web.fail(Fault("status", 500))  # the puller retries the HTTP pull once
        register(mpb.RegisterModelRequest(model_id="from-web", format="onnx",
                                          storage_key="web", storage_path="m.onnx",
                                          options=small))  # fmt: skip
        router.v2.ModelInfer(infer_request("from-web", input=X), timeout=30)
        assert web.fired() == ["GET status 500"]
        # A stale copy on the stub: NOT_FOUND, retried on a fresh load.
        register(mpb.RegisterModelRequest(model_id="stale", format="onnx", storage_path="mlp",
                                          options=small))  # fmt: skip
        publish(router, prefix, stub.address, holds="stale")  # type: ignore[attr-defined]
        router.v2.ModelInfer(infer_request("stale", input=X), timeout=30)

        async def puller_calls() -> None:  # a hit, a miss that fails, an eviction
            client = PullerClient(puller.address, timeout=60)
            try:
                await client.fetch("p-hit", StorageRef("default", "mlp"))
                await client.fetch("p-hit", StorageRef("default", "mlp"))
                with pytest.raises(Exception, match="missing"):
                    await client.fetch("p-missing", StorageRef("default", "missing"))
                await client.fetch("p-big", StorageRef("default", "big-1.bin"))
                await client.release("p-big")
                await client.fetch("p-big-2", StorageRef("default", "big-2.bin"))  # evicts big-1
            finally:
                await client.aclose()

        asyncio.run(puller_calls())

        kube = stack.enter_context(FakeKubeAPI(POOL_RESOURCES))
        mesh = MeshApi(router.address, timeout=10)
        stack.callback(mesh.close)
        controller = build_controller(kube, mesh, "controller-0", controller_registry, pools=True)
        controller.start()
        stack.callback(controller.stop)
        kube.create("predictors", predictor("fraud", "onnx", "mlp"))
        # A status written (the Predictor's 256 MiB default cannot fit the small pod: that
        # status says so, which is enough here).
        wait_until(
            lambda: (kube.get("predictors", NAMESPACE, "fraud") or {}).get("status"),
            what="the Predictor's status",
        )
        kube.wait_for_watches(1)
        kube.drop_watches()
        # A ServingRuntime: its pool's desired and actual pods (no kubelet here: none start).
        kube.create("servingruntimes", {
            "metadata": {"name": "onnx-rt", "namespace": NAMESPACE},
            "spec": {"multiModel": True, "containers": [{"name": "c"}],
                     "supportedModelFormats": [{"name": "onnx", "autoSelect": True}]},
        })  # fmt: skip

        # A pod on a (fake) device with a host tier, outside the mesh: models demote to host
        # memory, come back on a request, the host tier evicts; a runtime that keeps device
        # memory after unloads has the pod recycle itself (done last: the pod then refuses).
        device = FakeDevice(total=100 * MIB, baseline=2 * MIB)
        for name in ("a", "b", "c", "d", "e", "f", "g", "leaky"):
            (storage / f"{name}.fgpu").write_bytes(name.encode() * 100)
        device_pod = stack.enter_context(
            running_pod(
                runtimes=RuntimeRegistry([DeviceRuntime(device)]),
                artifacts=CountingPuller(storage, tmp_path / "device-disk"),
                device_memory=device,
                capacity=30 * MIB,
                host_tier="25M",
            )
        )

        def device_load(model_id: str, path: str, **options: str) -> None:
            device_pod.control.LoadModel(
                rpb.LoadModelRequest(model_id=model_id, storage_path=path, options=options),
                timeout=60,
            )

        for m in "abcd":  # 10 MiB each in 30: "a" demotes to host memory
            device_load(m, f"{m}.fgpu", size=str(10 * MIB))
        device_load("a", "a.fgpu", size=str(10 * MIB))  # back from the host tier: a promotion
        device_pod.v2.ModelInfer(infer_request("b", x=np.arange(4, dtype=np.float32)))  # another
        for m in "efg":  # more demotions than the 25 MB host tier holds: it evicts
            device_load(m, f"{m}.fgpu", size=str(10 * MIB))
        leaky_device = FakeDevice(total=100 * MIB)
        leaky_pod = stack.enter_context(
            running_pod(
                runtimes=RuntimeRegistry([DeviceRuntime(leaky_device)]),
                artifacts=CountingPuller(storage, tmp_path / "leaky-disk"),
                device_memory=leaky_device,
                capacity=50 * MIB,
                unload_leak_bound="5M",
                unload_settle=0.1,
            )
        )
        for _ in range(2):  # 3 MiB kept each time: past the 5M bound, the pod recycles
            leaky_pod.control.LoadModel(
                rpb.LoadModelRequest(
                    model_id="leaky",
                    storage_path="leaky.fgpu",
                    options={"size": str(10 * MIB), "leak": str(3 * MIB)},
                ),
                timeout=60,
            )
            leaky_pod.control.UnloadModel(rpb.UnloadModelRequest(model_id="leaky"))

        # Scale from zero: a model of a pool with no pod is held until a pod of it registers.
        register(mpb.RegisterModelRequest(
            model_id="cold", format="onnx", storage_path="mlp",
            options=mpb.ModelOptions(size_estimate=MIB // 4, required_labels={"pool": "cold"}),
        ))  # fmt: skip
        with concurrent.futures.ThreadPoolExecutor(1) as hold:
            held = hold.submit(router.v2.ModelInfer, infer_request("cold", input=X), timeout=60)
            wait_until(
                lambda: (router.server.registry.get_sample_value(
                    "mesh_router_held_requests", {"pool": "cold"}) or 0) == 1,
                what="the request held",
            )  # fmt: skip
            stack.enter_context(
                running_pod(
                    runtimes=RuntimeRegistry.discover(["onnx"]),
                    artifacts=CountingPuller(storage, tmp_path / "cold-disk"),
                    etcd=etcd.url, etcd_prefix=prefix, pod_id="pod-cold", lease_ttl=5,
                    labels={"pool": "cold"},
                )
            )  # fmt: skip
            held.result(60)

        # A generative model streamed through the router, on a pod of its own in the mesh.
        llm_pod = stack.enter_context(
            running_pod(
                artifacts=CountingPuller(llm_dir, tmp_path / "llm-disk"),
                etcd=etcd.url,
                etcd_prefix=prefix,
                pod_id="pod-llm",
                capacity=1 << 30,
            )
        )
        register(mpb.RegisterModelRequest(
            model_id="llama", format="transformers", storage_path="llama",
            options=mpb.ModelOptions(pinned_pods=["pod-llm"]),
        ))  # fmt: skip
        client = triton.InferenceServerClient(router.address)
        stack.callback(client.close)
        by_id = _stream(client, "llama", [_inputs("the quick brown", True, max_tokens=4)])
        assert by_id["0"], "the stream answered nothing"

        registries = [
            router.server.registry,
            pod.server.registry,
            llm_pod.server.registry,
            device_pod.server.registry,
            leaky_pod.server.registry,
            puller.registry,
            controller_registry,
        ]
        names = documented_metrics()
        # The leader publishes the cluster totals on its next pass; the controller counts the
        # watch it lost when it starts the next one.
        missing: list[str] = []

        def all_emitted() -> bool:
            missing[:] = unemitted(names, samples(registries))
            return not missing

        try:
            wait_until(all_emitted, timeout=30)
        except AssertionError:
            raise AssertionError(f"documented metrics never emitted: {missing}") from None
