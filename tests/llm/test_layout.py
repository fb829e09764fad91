"""Hugging Face layouts in a model directory: what is a model, what is an adapter, its base."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mesh.errors import InvalidRequest
from mesh.pod.repository import ModelRepository, source_for
from mesh.runtimes.registry import RuntimeRegistry


@pytest.fixture(scope="module")
def runtimes() -> RuntimeRegistry:
    return RuntimeRegistry.discover()


def test_models_and_adapters_are_recognised(llm_dir: Path, runtimes: RuntimeRegistry) -> None:
    repo = ModelRepository(llm_dir, runtimes)
    llama, adapter = repo.resolve("llama"), repo.resolve("llama-lora")
    assert (llama.format, llama.base, llama.file.name) == ("transformers", None, "config.json")
    assert (adapter.format, adapter.base) == ("transformers", "llama")
    # The whole directory is the model: weights, tokenizer and all.
    assert llama.disk_bytes() > (llm_dir / "llama" / "model.safetensors").stat().st_size


def test_an_adapter_naming_a_hub_path_needs_its_base_in_mesh_json(
    llm_dir: Path, runtimes: RuntimeRegistry, tmp_path: Path
) -> None:
    adapter = tmp_path / "support"
    shutil.copytree(llm_dir / "llama-lora", adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "meta-llama/Llama-3.2-1B"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidRequest, match="not a model id here"):
        source_for("support", adapter, runtimes)
    assert source_for("support", adapter, runtimes, base="llama").base == "llama"  # a router's
    (adapter / "mesh.json").write_text(json.dumps({"base": "llama"}))
    assert source_for("support", adapter, runtimes).base == "llama"
    with pytest.raises(InvalidRequest, match="not a LoRA adapter"):
        source_for("llama", llm_dir / "llama", runtimes, base="gpt2")
