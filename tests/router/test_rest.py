"""The router's v2 REST front over real pods and a real etcd: tritonclient.http (JSON and
binary), kserve's InferenceRESTClient, raw httpx for paths and error bodies, the repository
extension on both protocols, and REST sharing the gRPC miss path."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from mesh.examples import ALL_DATATYPES
from mesh.gen import management_pb2 as mpb
from tests.cluster.etcd_server import EtcdServer
from tests.helpers import RunningPod, running_router, wait_until
from tests.router.test_router import _loads, _register


def _sample(datatype: str) -> np.ndarray[Any, Any]:
    if datatype == "BYTES":
        return np.array([b"one", "twö".encode(), b""], dtype=np.object_)
    if datatype == "BOOL":
        return np.array([True, False, True])
    dtype = np.dtype(triton_http.triton_to_np_dtype(datatype))
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.array([info.min, 7, info.max], dtype=dtype)
    return np.array([-2.5, 0.125, 1024.0], dtype=dtype)


def test_tritonclient_http_json_and_binary_every_datatype_through_the_router(
    etcd: EtcdServer, prefix: str, pods: list[RunningPod]
) -> None:
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        _register(router, "identity", "onnx", "identity")
        client = triton_http.InferenceServerClient(router.rest)
        assert client.is_server_live() and client.is_server_ready()
        assert set(client.get_server_metadata()["extensions"]) >= {
            "binary_tensor_data", "model_repository",
        }  # fmt: skip
        assert not client.is_model_ready("identity")  # registered, not loaded yet
        for binary in (False, True):
            inputs, outputs = [], []
            for dt in ALL_DATATYPES:
                tensor = triton_http.InferInput(f"in_{dt}", [3], dt)
                tensor.set_data_from_numpy(_sample(dt), binary_data=binary)
                inputs.append(tensor)
                outputs.append(triton_http.InferRequestedOutput(f"out_{dt}", binary_data=binary))
            result = client.infer("identity", inputs, outputs=outputs, request_id=f"r{binary}")
            assert result.get_response()["id"] == f"r{binary}"
            for dt in ALL_DATATYPES:
                got = result.as_numpy(f"out_{dt}")
                want = _sample(dt)
                if dt == "BYTES":
                    got = [v if isinstance(v, bytes) else v.encode() for v in got]
                    assert got == list(want), (dt, binary)
                else:
                    assert got.dtype == want.dtype, (dt, binary)
                    np.testing.assert_array_equal(got, want, err_msg=f"{dt} binary={binary}")
        assert client.is_model_ready("identity")
        meta = client.get_model_metadata("identity")
        assert meta["name"] == "identity"
        assert {t["name"] for t in meta["inputs"]} == {f"in_{dt}" for dt in ALL_DATATYPES}
        # Only the outputs asked for come back.
        tensor = triton_http.InferInput("in_FP16", [3], "FP16")
        tensor.set_data_from_numpy(_sample("FP16"))
        others = [triton_http.InferInput(f"in_{dt}", [3], dt) for dt in ALL_DATATYPES[:-1]]
        for t in others:
            t.set_data_from_numpy(_sample(t.name()[3:]))
        named = [t for t in others if t.name() != "in_FP16"] + [tensor]
        bytes_in = triton_http.InferInput("in_BYTES", [3], "BYTES")
        bytes_in.set_data_from_numpy(_sample("BYTES"))
        result = client.infer(
            "identity",
            [*named, bytes_in],
            outputs=[triton_http.InferRequestedOutput("out_FP16", binary_data=False)],
        )
        assert [o["name"] for o in result.get_response()["outputs"]] == ["out_FP16"]
        client.close()


def test_rest_errors_have_clear_statuses_and_bodies(
    etcd: EtcdServer, prefix: str, pods: list[RunningPod]
) -> None:
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        _register(router, "mlp", "onnx", "mlp")
        _register(router, "broken", "onnx", "corrupt")
        _register(router, "nowhere", "onnx", "mlp", options=mpb.ModelOptions(
            required_labels={"gpu": "a100"}))  # fmt: skip
        base = f"http://{router.rest}"
        good = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                            "data": [0.5] * 64}]}  # fmt: skip
        with httpx.Client(base_url=base, timeout=60) as http:

            def check(method: str, path: str, status: int, says: str, **kw: Any) -> None:
                response = http.request(method, path, **kw)
                assert response.status_code == status, (path, response.text)
                assert response.headers["content-type"].startswith("application/json")
                error = response.json()["error"]
                assert says in error, (path, error)

            def infer(body: Any, model: str = "mlp", **kw: Any) -> tuple[str, str]:
                content = body if isinstance(body, bytes) else json.dumps(body).encode()
                return "POST", f"/v2/models/{model}/infer", {"content": content, **kw}  # type: ignore[return-value]

            def bad(body: Any, says: str, **kw: Any) -> None:
                method, path, extra = infer(body, **kw)  # type: ignore[misc]
                check(method, path, 400, says, **extra)

            assert http.post("/v2/models/mlp/infer", json=good).status_code == 200
            bad(b"{nope", "not valid JSON")
            bad({"inputs": [{**good["inputs"][0], "shape": [1, 63],  # type: ignore[dict-item]
                             "data": [0.5] * 63}]}, "the model expects [-1, 64]")  # fmt: skip
            bad({"inputs": [{**good["inputs"][0], "datatype": "INT32",  # type: ignore[dict-item]
                             "data": [1] * 64}]}, "the model expects 'FP32'")  # fmt: skip
            bad({"inputs": [{**good["inputs"][0], "data": [0.5] * 60}]},  # type: ignore[dict-item]
                "holds 60 elements")  # fmt: skip
            bad({"inputs": [{**good["inputs"][0], "datatype": "FP99"}]},  # type: ignore[dict-item]
                "unknown datatype")  # fmt: skip
            header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32",
                                             "shape": [1, 64],
                                             "parameters": {"binary_data_size": 256}}]}).encode()  # fmt: skip
            bad(header + b"\0" * 100, "binary section",
                headers={"Inference-Header-Content-Length": str(len(header))})  # fmt: skip
            bad(header + b"\0" * 256, "but the body has",
                headers={"Inference-Header-Content-Length": "99999"})  # fmt: skip
            bad({"inputs": good["inputs"], "outputs": [{"name": "nope"}]}, "unknown output")
            check(*infer(good, model="unknown")[:2], 404, "not registered",  # type: ignore[misc]
                  content=json.dumps(good).encode())  # fmt: skip
            check("POST", "/v2/models/unknown/infer", 404, "not registered", content=b"{x")
            check("GET", "/v2/models/unknown", 404, "not registered")
            check("GET", "/v2/models/unknown/ready", 404, "not registered")
            check("GET", "/v2/nothing/here", 404, "Not Found")
            check("GET", "/v2/models/mlp/infer", 405, "Not Allowed")
            # Registered but not loaded: not ready.
            ready = http.get("/v2/models/broken/ready")
            assert ready.status_code == 503 and ready.json() == {"name": "broken", "ready": False}
            # A model whose load fails, and one no pod can take: 503 with the reason.
            check(*infer({"inputs": [good["inputs"][0]]}, model="broken")[:2], 503,  # type: ignore[misc]
                  "failed to load", content=json.dumps(good).encode())  # fmt: skip
            check("POST", "/v2/models/nowhere/infer", 503, "no pod can load it",
                  content=json.dumps(good).encode())  # fmt: skip
            # The request's deadline (Triton's timeout parameter, in microseconds) passes.
            late = {**good, "parameters": {"timeout": 1}}
            _register(router, "late", "onnx", "mlp")
            check("POST", "/v2/models/late/infer", 504, "deadline",
                  content=json.dumps(late).encode())  # fmt: skip
            check("POST", "/v2/repository/index", 400, "not valid JSON", content=b"{")
            check("POST", "/v2/repository/models/unknown/load", 404, "not registered")
        # The router is still whole: every mistake above left it serving.
        with httpx.Client(base_url=base, timeout=60) as http:
            assert http.post("/v2/models/mlp/infer", json=good).status_code == 200
            assert http.get("/v2/health/ready").json() == {"ready": True}


def test_a_body_over_the_message_limit_is_refused_before_it_is_read(
    etcd: EtcdServer, prefix: str
) -> None:
    with running_router(etcd=etcd.url, etcd_prefix=prefix, max_message_bytes="64Ki") as router:
        response = httpx.post(
            f"http://{router.rest}/v2/models/mlp/infer", content=b"x" * (65 * 1024), timeout=30
        )
        assert response.status_code == 413
        assert "limit" in response.json()["error"]


def test_rest_and_grpc_interleaved_on_one_model_share_one_copy(
    etcd: EtcdServer, prefix: str, pods: list[RunningPod], model_dir: Path
) -> None:
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        _register(router, "mlp", "onnx", "mlp")
        rest = triton_http.InferenceServerClient(router.rest)
        grpc_client = triton_grpc.InferenceServerClient(router.address)
        session = ort.InferenceSession(str(model_dir / "mlp" / "model.onnx"))
        rng = np.random.default_rng(5)
        for i in range(12):
            x = rng.standard_normal((2, 64)).astype(np.float32)
            want = session.run(None, {"input": x})[0]
            if i % 2:
                tensor = triton_grpc.InferInput("input", [2, 64], "FP32")
                tensor.set_data_from_numpy(x)
                got = grpc_client.infer("mlp", [tensor]).as_numpy("output")
            else:
                tensor = triton_http.InferInput("input", [2, 64], "FP32")
                tensor.set_data_from_numpy(x, binary_data=i % 4 == 0)
                got = rest.infer("mlp", [tensor]).as_numpy("output")
            np.testing.assert_allclose(got, want, rtol=1e-6)
        assert _loads(pods) == 1
        # Both protocols are counted, each under its own method.
        sample = router.server.registry.get_sample_value
        labels = {"status": "OK"}
        assert sample("mesh_router_requests_total", {**labels, "method": "REST:infer"}) == 6
        assert sample("mesh_router_requests_total", {**labels, "method": "ModelInfer"}) == 6
        rest.close()
        grpc_client.close()


def test_vmodel_and_routing_headers_over_rest(
    etcd: EtcdServer, prefix: str, pods: list[RunningPod]
) -> None:
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        _register(router, "xgb-a", "xgboost", "xgb")
        router.management.SetVModel(
            mpb.SetVModelRequest(vmodel_id="fraud", target_model_id="xgb-a", wait=True)
        )
        body = {"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [2, 64],
                            "data": [0.1] * 128}]}  # fmt: skip
        with httpx.Client(base_url=f"http://{router.rest}", timeout=60) as http:
            by_url = http.post("/v2/models/fraud/infer", json=body)
            assert by_url.status_code == 200 and by_url.json()["model_name"] == "fraud"
            by_header = http.post(
                "/v2/models/whatever/infer", json=body, headers={"mm-vmodel-id": "fraud"}
            )
            assert by_header.status_code == 200
            assert by_header.json()["outputs"] == by_url.json()["outputs"]
            by_model = http.post(
                "/v2/models/whatever/infer", json=body, headers={"mm-model-id": "xgb-a"}
            )
            assert by_model.json()["outputs"] == by_url.json()["outputs"]
            assert http.get("/v2/models/fraud").json()["name"] == "fraud"


def test_64_concurrent_first_rest_requests_over_two_routers_make_one_load(
    etcd: EtcdServer, prefix: str, pods: list[RunningPod]
) -> None:
    with (
        running_router(etcd=etcd.url, etcd_prefix=prefix) as a,
        running_router(etcd=etcd.url, etcd_prefix=prefix) as b,
    ):
        _register(a, "xgb", "xgboost", "xgb")
        b.run(b.server.mirror.wait_for(lambda m: "xgb" in m.models))
        body = json.dumps({"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [1, 64],
                                       "data": [0.3] * 64}]}).encode()  # fmt: skip

        async def burst() -> list[int]:
            async with httpx.AsyncClient(
                timeout=60, limits=httpx.Limits(max_connections=64)
            ) as client:
                calls = [
                    client.post(f"http://{(a, b)[i % 2].rest}/v2/models/xgb/infer", content=body)
                    for i in range(64)
                ]
                return [r.status_code for r in await asyncio.gather(*calls)]

        assert asyncio.run(burst()) == [200] * 64
        assert _loads(pods) == 1


def _index(client: Any) -> dict[str, str]:
    index = client.get_model_repository_index()
    if isinstance(index, list):  # tritonclient.http: JSON
        return {m["name"]: m["state"] for m in index}
    return {m.name: m.state for m in index.models}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_repository_extension_from_tritonclient(
    etcd: EtcdServer, prefix: str, pods: list[RunningPod], protocol: str
) -> None:
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        _register(router, "xgb", "xgboost", "xgb")
        _register(router, "mlp", "onnx", "mlp")
        if protocol == "http":
            client: Any = triton_http.InferenceServerClient(router.rest)
        else:
            client = triton_grpc.InferenceServerClient(router.address)
        assert _index(client) == {"mlp": "UNAVAILABLE", "xgb": "UNAVAILABLE"}
        client.load_model("xgb")
        assert client.is_model_ready("xgb")
        assert _index(client) == {"mlp": "UNAVAILABLE", "xgb": "READY"}
        ready_only = client.get_model_repository_index(
            **({"query_params": None} if protocol == "http" else {})
        )
        assert ready_only  # the unfiltered list; the ready filter is checked below over REST
        assert _loads(pods) == 1
        client.unload_model("xgb")
        wait_until(lambda: not client.is_model_ready("xgb"), what="xgb unloaded everywhere")
        assert _index(client) == {"mlp": "UNAVAILABLE", "xgb": "UNAVAILABLE"}
        with pytest.raises(InferenceServerException) as err:
            client.load_model("unknown")
        assert "not registered" in str(err.value)
        # Unloaded, not unregistered: the next request loads it again.
        client.load_model("xgb")
        assert _loads(pods) == 2
        if protocol == "http":
            ready = httpx.post(f"http://{router.rest}/v2/repository/index", json={"ready": True})
            assert ready.json() == [{"name": "xgb", "state": "READY"}]
        client.close()


def test_repository_load_and_unload_take_the_management_token(
    etcd: EtcdServer, prefix: str, pods: list[RunningPod]
) -> None:
    with running_router(etcd=etcd.url, etcd_prefix=prefix, management_token="s3cret") as router:
        token = (("authorization", "Bearer s3cret"),)
        router.management.RegisterModel(
            mpb.RegisterModelRequest(model_id="xgb", format="xgboost", storage_path="xgb"),
            metadata=token,
        )
        url = f"http://{router.rest}/v2/repository/models/xgb/load"
        refused = httpx.post(url, timeout=30)
        assert refused.status_code == 401 and "bearer token" in refused.json()["error"]
        ok = httpx.post(url, headers={"authorization": "Bearer s3cret"}, timeout=60)
        assert ok.status_code == 200
        client = triton_grpc.InferenceServerClient(router.address)
        with pytest.raises(InferenceServerException) as err:
            client.unload_model("xgb")
        assert "UNAUTHENTICATED" in str(err.value.status())
        client.unload_model("xgb", headers={"authorization": "Bearer s3cret"})
        client.close()


_KSERVE_REST_CLIENT = """
import asyncio, json, sys
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest
from kserve.inference_client import RESTConfig

async def main(base, x):
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    out = {}
    for binary in (False, True):
        tensor = InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        request = InferRequest(model_name="mlp", infer_inputs=[tensor], request_id="k1")
        response = await client.infer(base, request, model_name="mlp")
        out[str(binary)] = response.outputs[0].as_numpy().tolist()
    out["ready"] = await client.is_model_ready(base, "mlp")
    await client.close()
    print(json.dumps(out))

asyncio.run(main(sys.argv[1], np.array(json.loads(sys.argv[2]), dtype=np.float32)))
"""


@pytest.mark.slow
def test_kserve_sdk_rest_client_through_the_router(
    etcd: EtcdServer, prefix: str, pods: list[RunningPod], model_dir: Path, tmp_path: Path
) -> None:
    """kserve's InferenceRESTClient, unchanged, JSON and binary (in its own process: kserve and
    tritonclient register the same protobuf names and cannot share one)."""
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        _register(router, "mlp", "onnx", "mlp")
        x = np.random.default_rng(4).standard_normal((3, 64)).astype(np.float32)
        script = tmp_path / "kserve_rest_client.py"
        script.write_text(_KSERVE_REST_CLIENT)
        done = subprocess.run(
            [sys.executable, str(script), f"http://{router.rest}", json.dumps(x.tolist())],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        out = json.loads(done.stdout.strip().splitlines()[-1])
        want = ort.InferenceSession(str(model_dir / "mlp" / "model.onnx")).run(None, {"input": x})
        for binary in ("False", "True"):
            np.testing.assert_allclose(np.array(out[binary], np.float32), want[0], rtol=1e-6)
        assert out["ready"] is True


def test_grpc_server_metadata_lists_the_extensions(
    etcd: EtcdServer, prefix: str, pods: list[RunningPod]
) -> None:
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        client = triton_grpc.InferenceServerClient(router.address)
        assert {"binary_tensor_data", "model_repository"} <= set(
            client.get_server_metadata().extensions
        )
        client.close()


@pytest.mark.slow
def test_rest_requests_survive_a_pod_killed_under_them(
    etcd: EtcdServer, prefix: str, model_dir: Path
) -> None:
    """A REST request that reaches a dead pod is retried on the other copy, as gRPC is."""
    import threading

    from tests.router.test_faults import pod_processes

    with (
        pod_processes(etcd, prefix, model_dir, 2) as procs,
        running_router(etcd=etcd.url, etcd_prefix=prefix, leader_interval=0.3) as router,
    ):
        router.management.RegisterModel(mpb.RegisterModelRequest(
            model_id="both", format="onnx", storage_path="mlp",
            options=mpb.ModelOptions(min_copies=2)))  # fmt: skip

        def copies() -> list[str]:
            status = router.management.GetModelStatus(mpb.GetModelStatusRequest(model_id="both"))
            return sorted(c.pod_id for c in status.copies if c.state == "loaded")

        wait_until(lambda: len(copies()) == 2, what="two copies of the model")
        body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                       "data": [0.25] * 64}]}).encode()  # fmt: skip
        ok: list[int] = []
        failed: list[str] = []
        stop = threading.Event()

        def loop() -> None:
            with httpx.Client(base_url=f"http://{router.rest}", timeout=20) as http:
                while not stop.is_set():
                    response = http.post("/v2/models/both/infer", content=body)
                    if response.status_code == 200:
                        ok.append(1)
                    else:
                        failed.append(f"{response.status_code}: {response.text}")

        threads = [threading.Thread(target=loop, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: len(ok) >= 20, what="requests flowing")
            victim = copies()[0]
            procs[victim][0].kill()  # SIGKILL: no drain, no lease revoked
            before = len(ok)
            wait_until(
                lambda: victim not in router.server.mirror.instances,
                timeout=30, what="the dead pod's lease to expire",
            )  # fmt: skip
            wait_until(lambda: len(ok) >= before + 20, what="requests after the kill")
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert failed == []


def test_a_rest_port_in_use_fails_the_start_with_one_clear_error(
    etcd: EtcdServer, prefix: str
) -> None:
    import socket

    from mesh.errors import InvalidRequest
    from mesh.router.server import RouterServer
    from mesh.router.settings import RouterSettings

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = RouterSettings(
            etcd=etcd.url, etcd_prefix=prefix, host="127.0.0.1", port=0, rest_port=port,
            metrics_port=None,
        )  # fmt: skip

        async def start() -> str:
            router = RouterServer(settings)
            try:
                await router.start()
            except InvalidRequest as exc:
                return str(exc)
            await router.aclose()
            return "started"

        message = asyncio.run(start())
        # Refused before anything starts (mesh.lifecycle.check_port_free), naming the port.
        assert f"cannot listen on 127.0.0.1:{port}" in message and "--rest-port" in message
