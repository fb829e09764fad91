"""Fake runtimes for the cache and data-plane tests: sizes, delays and failures on demand.

A FakeRuntime's models "hold" the bytes their `size` option says, in a FakeMemory that stands
in for the process RSS, so the cache's measurement path runs for real.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mesh.pod.cache import ModelSource
from mesh.runtimes.base import LoadRequest
from mesh.tensors import Signature, TensorSpec


class FakeMemory:
    def __init__(self) -> None:
        self.used = 100 * 2**20
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.used += n

    def read(self) -> int:
        return self.used


class FakeModel:
    platform = "fake"
    signature = Signature.of([TensorSpec("x", "FP32", (-1,))], [TensorSpec("y", "FP32", (-1,))])

    def __init__(self, runtime: FakeRuntime, size: int, predict_delay: float) -> None:
        self._runtime = runtime
        self._size = size
        self._predict_delay = predict_delay
        runtime.memory.add(size)

    def predict(
        self, inputs: Mapping[str, np.ndarray[Any, Any]], outputs: Sequence[str]
    ) -> Mapping[str, np.ndarray[Any, Any]]:
        if self._predict_delay:
            time.sleep(self._predict_delay)
        return {"y": inputs["x"] * 2}

    def size_hint(self) -> int | None:
        return None

    def close(self) -> None:
        self._runtime.memory.add(-self._size)
        self._runtime.closed += 1


class FakeRuntime:
    name: ClassVar[str] = "fake"
    suffixes: ClassVar[tuple[str, ...]] = (".fake",)
    option_keys: ClassVar[frozenset[str]] = frozenset({"size", "delay", "fail", "predict_delay"})
    size_factor: ClassVar[float] = 1.0

    def __init__(self) -> None:
        self.memory = FakeMemory()
        self.loads: list[str] = []
        self.closed = 0
        self.running = 0
        self.max_running = 0
        self.gates: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def load(self, request: LoadRequest) -> FakeModel:
        with self._lock:
            self.loads.append(request.model_id)
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            gate = self.gates.get(request.model_id)
            if gate is not None:
                gate.wait(30)
            time.sleep(float(request.options.get("delay", 0)))
            if request.options.get("fail"):
                raise RuntimeError(request.options["fail"])
            size = int(request.options.get("size", 1000))
            return FakeModel(self, size, float(request.options.get("predict_delay", 0)))
        finally:
            with self._lock:
                self.running -= 1


def fake_source(tmp: Path, model_id: str, size: int = 1000, **options: Any) -> ModelSource:
    """A model whose file is `size` bytes on disk and which holds `size` bytes once loaded."""
    file = tmp / f"{model_id}.fake"
    if not file.exists():
        file.write_bytes(b"\0" * size)
    opts = {"size": str(size), **{k: str(v) for k, v in options.items()}}
    return ModelSource(model_id, "fake", file, options=opts)
