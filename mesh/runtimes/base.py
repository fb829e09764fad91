"""The runtime interface and the per-model configuration (mesh.json) every runtime reads.

Runtime.load runs in a worker thread and may block for as long as the framework needs;
LoadedModel.predict runs in the inference pool, several calls at once. Both raise framework
errors freely: the pod translates them (load -> ModelLoadFailed, predict -> RuntimeFailure).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from mesh.errors import InvalidRequest
from mesh.tensors import Signature, TensorSpec

CONFIG_NAME = "mesh.json"


@dataclass(frozen=True, slots=True)
class Device:
    """Where models run: "cpu", or "cuda" with a device index."""

    kind: str = "cpu"
    index: int = 0

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    def __str__(self) -> str:
        return f"cuda:{self.index}" if self.is_cuda else "cpu"


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """What mesh.json beside a model says; every field is optional.

    {"format": "xgboost", "file": "model.ubj",
     "inputs": [{"name": "input__0", "datatype": "FP32", "shape": [-1, 64]}],
     "outputs": [{"name": "output__0", "datatype": "FP32", "shape": [-1]}],
     "options": {"nthread": "1"}}
    """

    format: str | None = None
    file: str | None = None
    inputs: tuple[TensorSpec, ...] | None = None
    outputs: tuple[TensorSpec, ...] | None = None
    options: Mapping[str, str] = field(default_factory=dict)
    # An adapter's base model, by model id (docs/llm.md).
    base: str | None = None

    @classmethod
    def read(cls, directory: Path) -> ModelConfig:
        path = directory / CONFIG_NAME
        if not path.is_file():
            return cls()
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidRequest(f"{CONFIG_NAME}: cannot read it: {exc}") from exc
        return cls.parse(raw)

    @classmethod
    def parse(cls, raw: Any) -> ModelConfig:
        if not isinstance(raw, dict):
            raise InvalidRequest(f"{CONFIG_NAME} must hold a JSON object")
        unknown = set(raw) - {"format", "file", "inputs", "outputs", "options", "base"}
        if unknown:
            raise InvalidRequest(f"{CONFIG_NAME}: unknown keys {sorted(unknown)}")

        def tensors(key: str) -> tuple[TensorSpec, ...] | None:
            if key not in raw:
                return None
            if not isinstance(raw[key], list):
                raise InvalidRequest(f"{CONFIG_NAME}: {key} must be a list")
            return tuple(TensorSpec.from_json(t, f"{CONFIG_NAME} {key}") for t in raw[key])

        options = raw.get("options", {})
        if not isinstance(options, dict):
            raise InvalidRequest(f"{CONFIG_NAME}: options must be an object")
        for key in ("format", "file", "base"):
            if key in raw and not isinstance(raw[key], str):
                raise InvalidRequest(f"{CONFIG_NAME}: {key} must be a string")
        return cls(
            format=raw.get("format"),
            file=raw.get("file"),
            inputs=tensors("inputs"),
            outputs=tensors("outputs"),
            options={str(k): str(v) for k, v in options.items()},
            base=raw.get("base"),
        )


@dataclass(frozen=True, slots=True)
class LoadRequest:
    """Everything a runtime needs to load one model."""

    model_id: str
    file: Path
    config: ModelConfig
    options: Mapping[str, str]
    device: Device
    # The model file's bytes, already in memory (a promotion from the pod's host tier): a
    # runtime whose `accepts_bytes` is true loads from them instead of reading `file`.
    data: bytes | None = None
    # An adapter's base model, loaded on this pod (None for every other model).
    base: LoadedModel | None = None


class LoadedModel(Protocol):
    """A model in memory, ready to predict."""

    signature: Signature
    platform: str

    def predict(
        self, inputs: Mapping[str, np.ndarray[Any, Any]], outputs: Sequence[str]
    ) -> Mapping[str, np.ndarray[Any, Any]]:
        """Run the model; return at least the arrays named in `outputs`."""
        ...

    def size_hint(self) -> int | None:
        """The framework's own count of the bytes the model holds, where it keeps one."""
        ...

    def close(self) -> None:
        """Release the model's memory. Called once, with no predict in flight."""
        ...


class HostCopy(Protocol):
    """A model demoted to host memory: what the pod's host tier keeps of it.

    `restore` runs in a load thread and gives the model back on the request's device (a torch
    module moved back to the GPU, a session re-created from bytes); `close` lets it go.
    """

    nbytes: int

    def restore(self, request: LoadRequest) -> LoadedModel: ...

    def close(self) -> None: ...


class Demotable(Protocol):
    """A loaded model that can move itself to host memory (optional on LoadedModel).

    `demote()` frees the model's device memory and returns what restores it, or None when it
    cannot (the pod then keeps the file's bytes instead, if the runtime accepts them). Called
    once, in the unload thread, with no predict in flight; the model is not closed afterwards.
    """

    def demote(self) -> HostCopy | None: ...


class Runtime(Protocol):
    """Loads models of one family. Instances are created once per pod, with no arguments."""

    name: ClassVar[str]
    # File suffixes this runtime loads, used to infer a model's format from its files.
    suffixes: ClassVar[tuple[str, ...]]
    # Option keys this runtime accepts (from LoadModel options or mesh.json); others are refused.
    option_keys: ClassVar[frozenset[str]]
    # Typical (bytes in memory) / (bytes on disk), before the pod has measured any load.
    size_factor: ClassVar[float]

    def load(self, request: LoadRequest) -> LoadedModel: ...

    def warm_up(self) -> None:
        """Import the framework and initialise what it sets up once per process.

        Called once at pod start, before any load: otherwise the first model of each framework
        would be measured as costing the framework's own tens of megabytes.
        """
        ...


def int_option(options: Mapping[str, str], key: str, default: int, minimum: int = 0) -> int:
    value = options.get(key)
    if value is None:
        return default
    try:
        parsed = int(value)
    except ValueError:
        raise InvalidRequest(f"option {key}={value!r} is not an integer") from None
    if parsed < minimum:
        raise InvalidRequest(f"option {key}={value!r} must be at least {minimum}")
    return parsed
