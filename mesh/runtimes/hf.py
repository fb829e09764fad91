"""Hugging Face layouts, recognised without importing any framework (for the repository).

A directory with `config.json` naming a `model_type` or `architectures` is a model of format
`transformers`; one with peft's `adapter_config.json` is an adapter on a base model.
"""

from __future__ import annotations

import json
from pathlib import Path

TRANSFORMERS = "transformers"
HF_CONFIG = "config.json"
ADAPTER_CONFIG = "adapter_config.json"


def is_hf_model_dir(config_path: Path) -> bool:
    """Whether a config.json is a Hugging Face model config (not, say, an XGBoost model)."""
    try:
        raw = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(raw, dict) and ("model_type" in raw or "architectures" in raw)


def adapter_base(adapter_config: Path) -> str | None:
    """The base model an adapter names in `base_model_name_or_path`, if any."""
    try:
        raw = json.loads(adapter_config.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    base = raw.get("base_model_name_or_path") if isinstance(raw, dict) else None
    return base if isinstance(base, str) and base else None
