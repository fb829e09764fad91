"""Capacity from cgroups and devices, byte-size settings, and device fallbacks on a CPU machine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from mesh.pod.capacity import cgroup_memory_limit, choose_device, default_capacity
from mesh.pod.settings import PodSettings
from mesh.runtimes.base import Device, LoadRequest, ModelConfig
from mesh.runtimes.onnx import OnnxRuntime


def test_cgroup_v2_limit(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text("4294967296\n")
    assert cgroup_memory_limit(tmp_path) == 4 * 2**30
    assert default_capacity(Device(), 2**30, cgroup_root=tmp_path) == 3 * 2**30


def test_cgroup_v1_limit_and_no_limit(tmp_path: Path) -> None:
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text(str(2**30))
    assert cgroup_memory_limit(tmp_path) == 2**30
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text(str(2**63 - 4096))
    assert cgroup_memory_limit(tmp_path) is None
    (tmp_path / "memory.max").write_text("max\n")
    assert cgroup_memory_limit(tmp_path) is None


def test_without_a_limit_the_host_memory_less_reserve(tmp_path: Path) -> None:
    import os

    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert default_capacity(Device(), 2**29, cgroup_root=tmp_path) == host - 2**29


def test_reserve_never_eats_the_whole_capacity(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text(str(2**30))
    assert default_capacity(Device(), 2**31, cgroup_root=tmp_path) == 2**30 // 10


def test_the_downward_api_limit_comes_before_the_cgroup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "memory.max").write_text(str(64 * 2**30))  # what some runtimes show: the node's
    monkeypatch.setenv("MESH_POD_MEMORY_LIMIT", "4Gi")  # resourceFieldRef: limits.memory
    limit = PodSettings().memory_limit
    assert limit == 4 * 2**30
    assert default_capacity(Device(), 2**30, tmp_path, memory_limit=limit) == 3 * 2**30
    monkeypatch.setenv("MESH_POD_MEMORY_LIMIT", "4294967296")  # the downward API gives bytes
    assert PodSettings().memory_limit == 4 * 2**30
    monkeypatch.setenv("MESH_POD_MEMORY_LIMIT", "-1")
    with pytest.raises(ValidationError):
        PodSettings()


def test_device_choice_on_a_cpu_machine() -> None:
    assert choose_device("cpu", 0) == Device()
    assert choose_device("auto", 0) == Device()  # no GPU here
    assert choose_device("cuda", 1) == Device("cuda", 1)  # asked for: honoured
    assert str(Device("cuda", 1)) == "cuda:1"


@pytest.mark.parametrize(
    ("text", "value"),
    [("1073741824", 2**30), ("1Gi", 2**30), ("512MiB", 512 * 2**20), ("2G", 2 * 10**9),
     ("1.5 GiB", 3 * 2**29), ("64ki", 64 * 1024)],
)  # fmt: skip
def test_byte_sizes(text: str, value: int) -> None:
    assert PodSettings(capacity=text).capacity == value


def test_bad_settings_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="not a byte size"):
        PodSettings(capacity="lots")
    with pytest.raises(ValidationError):
        PodSettings(workers=0)
    monkeypatch.setenv("MESH_POD_LOAD_TIMEOUT", "-1")
    with pytest.raises(ValidationError):
        PodSettings()
    monkeypatch.setenv("MESH_POD_LOAD_TIMEOUT", "12.5")
    assert PodSettings().load_timeout == 12.5


def test_onnx_on_a_cuda_pod_without_the_cuda_provider_falls_back_to_cpu(
    model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    request = LoadRequest(
        "mlp", model_dir / "mlp" / "model.onnx", ModelConfig(), {}, Device("cuda", 0)
    )
    model = OnnxRuntime().load(request)
    out = model.predict({"input": np.zeros((1, 64), np.float32)}, ["output"])
    assert out["output"].shape == (1, 10)
    assert "no CUDA provider" in caplog.text
