"""Fake runtimes for the cache and data-plane tests: sizes, delays and failures on demand.

A FakeRuntime's models "hold" the bytes their `size` option says, in a FakeMemory that stands
in for the process RSS, so the cache's measurement path runs for real. Both pass the contract in
tests/pod/test_runtime_contract.py beside a real runtime and the real RSS meter.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mesh.errors import ArtifactNotFound
from mesh.pod.cache import ModelSource
from mesh.runtimes.base import LoadRequest
from mesh.storageref import StorageRef
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
        self._runtime.predicting.set()
        gate = self._runtime.predict_gate
        if gate is not None:
            gate.wait(30)
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
        self.predicting = threading.Event()  # set when a predict starts
        self.predict_gate: threading.Event | None = None  # predicts wait for it when set
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
            if not request.file.exists():  # as a framework fails (tests/pod/test_runtime_contract)
                raise FileNotFoundError(f"no model file {request.file}")
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


class DeviceModel:
    """A model holding `size` bytes of a FakeDevice; `leak` of them stay when it is closed."""

    platform = "fake"
    signature = FakeModel.signature

    def __init__(self, runtime: DeviceRuntime, size: int, leak: int, late: float = 0.0) -> None:
        self._runtime = runtime
        self.size = size
        self.leak = leak
        self.late = late  # seconds before a close's memory comes back (asynchronous frees)
        self.on_device = True

    def predict(
        self, inputs: Mapping[str, np.ndarray[Any, Any]], outputs: Sequence[str]
    ) -> Mapping[str, np.ndarray[Any, Any]]:
        assert self.on_device, "a demoted model was asked to predict"
        return {"y": inputs["x"] * 2}

    def size_hint(self) -> int | None:
        return None

    def demote(self) -> DeviceCopy | None:
        if not self._runtime.demotable:
            return None
        self.on_device = False
        self._runtime.device.free(self.size - self.leak)
        self._runtime.demoted += 1
        return DeviceCopy(self._runtime, self.size, self.leak)

    def close(self) -> None:
        self._runtime.closed += 1
        if self.late:
            threading.Timer(self.late, self._runtime.device.free, [self.size - self.leak]).start()
        else:
            self._runtime.device.free(self.size - self.leak)


class DeviceCopy:
    """A DeviceModel's weights in host memory: `restore` puts them back on the device."""

    def __init__(self, runtime: DeviceRuntime, size: int, leak: int) -> None:
        self._runtime = runtime
        self._size = size
        self._leak = leak
        self.nbytes = size

    def restore(self, request: LoadRequest) -> DeviceModel:
        self._runtime.device.allocate(self._size)
        self._runtime.restored.append(request.model_id)
        return DeviceModel(self._runtime, self._size, self._leak)

    def close(self) -> None:
        self._runtime.copies_closed += 1


class DeviceRuntime:
    """A runtime on a FakeDevice: loads allocate `size` bytes there, closes free them less
    `leak`; models demote themselves (unless `demotable` is false); loads from bytes count."""

    name: ClassVar[str] = "fakegpu"
    suffixes: ClassVar[tuple[str, ...]] = (".fgpu",)
    option_keys: ClassVar[frozenset[str]] = frozenset({"size", "leak", "late"})
    size_factor: ClassVar[float] = 1.0
    accepts_bytes: ClassVar[bool] = True

    def __init__(self, device: Any, demotable: bool = True) -> None:
        self.device = device
        self.demotable = demotable
        self.loads: list[str] = []
        self.from_bytes: list[str] = []
        self.restored: list[str] = []
        self.demoted = 0
        self.closed = 0
        self.copies_closed = 0

    def load(self, request: LoadRequest) -> DeviceModel:
        size = int(request.options.get("size", 1000))
        self.device.allocate(size)
        self.loads.append(request.model_id)
        if request.data is not None:
            self.from_bytes.append(request.model_id)
        leak = int(request.options.get("leak", 0))
        return DeviceModel(self, size, leak, float(request.options.get("late", 0)))


def device_source(tmp: Path, model_id: str, size: int, **options: Any) -> ModelSource:
    """A model for DeviceRuntime: a small file, `size` bytes on the device once loaded."""
    file = tmp / f"{model_id}.fgpu"
    if not file.exists():
        file.write_bytes(model_id.encode() * 16)
    opts = {"size": str(size), **{k: str(v) for k, v in options.items()}}
    return ModelSource(model_id, "fakegpu", file, options=opts)


class ScratchModel:
    """What a ScratchRuntime's load kept: `keep` bytes of real process memory."""

    platform = "fake"
    signature = FakeModel.signature

    def __init__(self, kept: list[bytearray]) -> None:
        self._kept: list[bytearray] | None = kept

    def predict(
        self, inputs: Mapping[str, np.ndarray[Any, Any]], outputs: Sequence[str]
    ) -> Mapping[str, np.ndarray[Any, Any]]:
        return {"y": inputs["x"] * 2}

    def size_hint(self) -> int | None:
        return None

    def close(self) -> None:
        self._kept = None


class ScratchRuntime:
    """A runtime whose loads cost real RSS, as a deserialiser's do: each load makes `scratch`
    bytes of temporaries in pieces of `piece` bytes (64 KiB), each followed by a small block it
    keeps, and frees the temporaries before it returns (freed among kept blocks, or at the top
    of a thread's heap, glibc keeps them resident); the model keeps `keep` bytes. Torch's load
    from bytes copies the file's bytes once per tensor record, then frees the copies."""

    name: ClassVar[str] = "scratch"
    suffixes: ClassVar[tuple[str, ...]] = (".scratch",)
    option_keys: ClassVar[frozenset[str]] = frozenset({"scratch", "piece", "keep"})
    size_factor: ClassVar[float] = 1.0

    def load(self, request: LoadRequest) -> ScratchModel:
        piece = int(request.options.get("piece", 64 * 1024))
        temporaries, kept = [], []
        for _ in range(int(request.options.get("scratch", 0)) // piece):
            temporaries.append(bytearray(piece))
            kept.append(bytearray(600))  # above pymalloc's 512 bytes: from glibc's heap
        del temporaries
        kept.append(bytearray(int(request.options.get("keep", 0))))
        return ScratchModel(kept)


class CountingPuller:
    """A puller for one pod: each pull copies the model from `store` into its own disk cache
    (counted), and a release deletes that copy, as a puller evicting it would."""

    def __init__(self, store: Path, cache: Path) -> None:
        self.store = store
        self.cache = cache
        self.pulls: list[str] = []
        self.released: list[str] = []

    async def pull(self, model_id: str, storage: StorageRef) -> str:
        import shutil

        self.pulls.append(model_id)
        source = self.store / storage.path
        if not source.exists():  # as the puller answers (tests/puller/test_source_contract.py)
            raise ArtifactNotFound(f"storage {storage.key!r}: {storage.path} does not exist")
        target = self.cache / model_id / source.name
        shutil.rmtree(target.parent, ignore_errors=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            target.parent.mkdir(parents=True)
            shutil.copy(source, target)
        return str(target)

    async def release(self, model_id: str) -> None:
        import shutil

        self.released.append(model_id)
        shutil.rmtree(self.cache / model_id, ignore_errors=True)


class FakePuller:
    """Serves files from a directory standing in for object storage, as the puller's client
    does (the contract in tests/puller/test_source_contract.py, which the real one passes)."""

    def __init__(self, storage: Path) -> None:
        self.storage = storage
        # (model id, storage key, path) of each pull, its puller options, and its whole ref.
        self.pulls: list[tuple[str, str, str]] = []
        self.options: list[dict[str, str]] = []
        self.refs: list[StorageRef] = []
        self.released: list[str] = []

    async def pull(self, model_id: str, storage: StorageRef) -> str:
        self.pulls.append((model_id, storage.key, storage.path))
        self.options.append(storage.options())
        self.refs.append(storage)
        local = self.storage / storage.path
        if not local.exists():
            raise ArtifactNotFound(f"storage {storage.key!r}: {storage.path} does not exist")
        return str(local)

    async def release(self, model_id: str) -> None:
        self.released.append(model_id)
