"""The admin commands against a real router over real pods: tables, JSON, YAML, TLS, --watch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
import yaml

from mesh.cli import main
from tests.cluster.etcd_server import EtcdServer
from tests.helpers import RunningPod, running_router, wait_until
from tests.router.test_security import certs  # noqa: F401  (the module's CA and certificates)


def _mesh(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _infer(address: str, model: str) -> None:
    client = triton.InferenceServerClient(address)
    x = triton.InferInput("input", [1, 64], "FP32")
    x.set_data_from_numpy(np.zeros((1, 64), np.float32))
    client.infer(model, [x])


def test_mesh_status_shows_every_pod_and_model(
    etcd: EtcdServer, prefix: str, pods: list[RunningPod], capsys: pytest.CaptureFixture[str]
) -> None:
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        r = ("--router", router.address)
        code, out, _ = _mesh(capsys, "register", "mlp", "--format", "onnx",
                             "--storage-path", "mlp", *r)  # fmt: skip
        assert code == 0
        assert "Model:" in out and "NOT_LOADED" in out and "model_id:" not in out
        assert _mesh(capsys, "register", "idle", "--format", "onnx",
                     "--storage-path", "identity", *r)[0] == 0  # fmt: skip
        _infer(router.address, "mlp")

        def loaded() -> dict:
            code, out, _ = _mesh(capsys, "status", "-o", "json", *r)
            assert code == 0
            data = json.loads(out)
            by_id = {m["model_id"]: m for m in data["models"]}
            return data if by_id["mlp"]["state"] == "LOADED" else {}

        data = wait_until(loaded, what="mlp loaded, as `mesh status -o json` sees it")
        assert [p["pod_id"] for p in data["pods"]] == ["pod-0", "pod-1"]
        assert all(p["capacity_bytes"] == 2**30 for p in data["pods"])
        holder = next(p for p in data["pods"] if p["models"] == ["mlp"])
        assert holder["used_bytes"] > 0
        assert holder["updated_at"].endswith("Z")  # readable times, not epoch seconds
        mlp = next(m for m in data["models"] if m["model_id"] == "mlp")
        assert [c["pod_id"] for c in mlp["copies"]] == [holder["pod_id"]]
        assert mlp["copies"][0]["since"].endswith("Z")
        idle = next(m for m in data["models"] if m["model_id"] == "idle")
        assert idle["state"] == "NOT_LOADED" and idle["last_used"] is None

        # The same answer as YAML, and as tables for people.
        code, out, _ = _mesh(capsys, "status", "-o", "yaml", *r)
        assert code == 0
        assert [p["pod_id"] for p in yaml.safe_load(out)["pods"]] == ["pod-0", "pod-1"]
        code, out, _ = _mesh(capsys, "status", *r)
        assert code == 0
        lines = out.splitlines()
        assert lines[0].split()[:3] == ["POD", "ADDRESS", "USED/CAPACITY"]
        pod_row = next(line for line in lines if line.startswith(holder["pod_id"]))
        assert "/1.0Gi" in pod_row and "1 (mlp)" in pod_row and "serving" in pod_row
        model_row = next(line for line in lines if line.startswith("mlp "))
        assert "LOADED" in model_row and holder["pod_id"] in model_row and "ago" in model_row

        code, out, _ = _mesh(capsys, "list", *r)
        assert code == 0 and out.split()[:3] == ["MODEL", "FORMAT", "STATE"]

        code, out, _ = _mesh(capsys, "unregister", "idle", *r)
        assert code == 0 and "removed" in out
        code, out, err = _mesh(capsys, "status", "idle", *r)
        assert code == 1 and "NOT_FOUND" in err and out == ""


def test_status_of_a_vmodel_shows_it_and_the_model_it_serves(
    etcd: EtcdServer, prefix: str, pods: list[RunningPod], capsys: pytest.CaptureFixture[str]
) -> None:
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        r = ("--router", router.address)
        assert _mesh(capsys, "register", "mlp-v1", "--format", "onnx",
                     "--storage-path", "mlp", *r)[0] == 0  # fmt: skip
        code, out, _ = _mesh(capsys, "vmodel", "set", "mlp", "--to", "mlp-v1", *r)
        assert code == 0 and "UP_TO_DATE" in out
        code, out, _ = _mesh(capsys, "status", "mlp", *r)
        assert code == 0
        assert "VModel:" in out and "Active:" in out and "Model:" in out and "mlp-v1" in out
        code, out, _ = _mesh(capsys, "status", "mlp", "-o", "json", *r)
        data = json.loads(out)
        assert data["vmodel"]["active_model_id"] == "mlp-v1"
        assert data["model"]["model_id"] == "mlp-v1"
        code, out, _ = _mesh(capsys, "status", "-o", "json", *r)
        assert json.loads(out)["vmodels"][0]["vmodel_id"] == "mlp"
        code, out, _ = _mesh(capsys, "vmodel", "delete", "mlp", *r)
        assert code == 0 and "removed" in out


def test_admin_commands_use_tls_and_the_token_from_mesh_variables(
    etcd: EtcdServer,
    prefix: str,
    certs: Path,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with running_router(
        etcd=etcd.url, etcd_prefix=prefix, tls_cert=certs / "server.crt",
        tls_key=certs / "server.key", tls_ca=certs / "ca.crt", management_token="s3cret",
    ) as router:  # fmt: skip
        monkeypatch.setenv("MESH_ROUTER", router.address)
        # Without TLS the router's port answers nothing.
        code, _, err = _mesh(capsys, "list", "--timeout", "5")
        assert code == 1 and "UNAVAILABLE" in err and router.address in err
        monkeypatch.setenv("MESH_TLS_CA", str(certs / "ca.crt"))
        monkeypatch.setenv("MESH_TLS_CERT", str(certs / "client.crt"))
        monkeypatch.setenv("MESH_TLS_KEY", str(certs / "client.key"))
        code, _, err = _mesh(capsys, "list")
        assert code == 1 and "UNAUTHENTICATED" in err
        monkeypatch.setenv("MESH_TOKEN", "s3cret")
        code, out, _ = _mesh(capsys, "list", "-o", "json")
        assert code == 0 and json.loads(out) == {"models": []}
        # Flags win over the variables.
        code, _, err = _mesh(capsys, "list", "--token", "wrong")
        assert code == 1 and "UNAUTHENTICATED" in err
        code, _, err = _mesh(capsys, "list", "--tls-cert", str(certs / "client.crt"),
                             "--tls-key", str(certs / "missing.key"))  # fmt: skip
        assert code == 2 and "missing.key" in err


def test_status_watch_prints_the_mesh_again_as_it_changes(
    etcd: EtcdServer, prefix: str, pods: list[RunningPod], capsys: pytest.CaptureFixture[str]
) -> None:
    with running_router(etcd=etcd.url, etcd_prefix=prefix) as router:
        env = {**os.environ, "MESH_ROUTER": router.address}
        watch = subprocess.Popen(
            [sys.executable, "-m", "mesh", "status", "--watch", "--interval", "0.2", "-o", "json"],
            stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        try:
            assert watch.stdout is not None
            first = json.loads(watch.stdout.readline())
            assert first["models"] == [] and len(first["pods"]) == 2
            assert _mesh(capsys, "register", "mlp", "--format", "onnx",
                         "--storage-path", "mlp", "--router", router.address)[0] == 0  # fmt: skip
            while True:  # each line is one whole snapshot; ends when the model shows up
                frame = json.loads(watch.stdout.readline())
                if frame["models"]:
                    break
            assert frame["models"][0]["model_id"] == "mlp"
        finally:
            watch.terminate()
            watch.wait(10)
