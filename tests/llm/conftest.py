from __future__ import annotations

from pathlib import Path

import pytest

from mesh.llm import examples


@pytest.fixture(scope="session")
def llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Hugging Face models made by the tests, once per session: a Llama, a GPT-2, and a LoRA
    adapter on the Llama (named `llama` in its adapter_config.json)."""
    root = tmp_path_factory.mktemp("llm")
    examples.tiny_llama(root / "llama")
    examples.tiny_gpt2(root / "gpt2")
    examples.lora_adapter(root / "llama-lora", root / "llama", "llama")
    return root
