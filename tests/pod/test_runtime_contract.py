"""The contract between the pod's cache and a runtime, run on FakeRuntime (with its FakeMemory)
and on a real runtime (ONNX, with the process RSS the pod really reads): the fake the cache
tests use must behave the way the cache relies on a real runtime to behave.

What the cache relies on: a load runs in a worker thread and returns a model whose signature
names its tensors; predict answers with arrays named as asked, batch for batch, from any
thread; a file that is not there fails the load; the memory meter reads a positive byte count
that grows by at least what a loaded model holds (how the cache measures a model's size);
size_hint is None or a positive count.
"""

from __future__ import annotations

import concurrent.futures
import gc
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mesh.pod.memory import rss_bytes
from mesh.runtimes.base import Device, LoadRequest, ModelConfig
from tests.fakes import FakeRuntime

MB = 1 << 20


@dataclass
class Subject:
    runtime: Any
    meter: Callable[[], int | None]
    # A model file in `directory` holding about `nbytes` once loaded: (file, options).
    make: Callable[[Path, int], tuple[Path, dict[str, str]]]
    batch: Callable[[int], dict[str, np.ndarray]]


def _fake() -> Subject:
    runtime = FakeRuntime()

    def make(directory: Path, nbytes: int) -> tuple[Path, dict[str, str]]:
        file = directory / "model.fake"
        file.write_bytes(b"\0" * 100)
        return file, {"size": str(nbytes)}

    return Subject(runtime, runtime.memory.read, make, lambda n: {"x": np.ones(n, np.float32)})


def _onnx() -> Subject:
    from mesh.examples import onnx_mlp
    from mesh.runtimes.onnx import OnnxRuntime

    def make(directory: Path, nbytes: int) -> tuple[Path, dict[str, str]]:
        width = int((nbytes / 4) ** 0.5)  # one width x width FP32 layer holds ~nbytes
        return onnx_mlp(directory, sizes=(8, width, width, 4)), {}

    return Subject(OnnxRuntime(), rss_bytes, make, lambda n: {"input": np.ones((n, 8), np.float32)})


@pytest.fixture(params=["fake", "onnx"])
def subject(request: pytest.FixtureRequest) -> Iterator[Subject]:
    yield _fake() if request.param == "fake" else _onnx()
    gc.collect()


def load(subject: Subject, file: Path, options: dict[str, str]) -> Any:
    request = LoadRequest("m", file, ModelConfig(), options, Device())
    # The cache loads in a worker thread, never on the thread that built the runtime.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(subject.runtime.load, request).result(60)


def test_a_loaded_model_answers_with_the_outputs_asked_for(
    subject: Subject, tmp_path: Path
) -> None:
    file, options = subject.make(tmp_path, 4 * MB)
    model = load(subject, file, options)
    assert model.platform
    inputs = [spec.name for spec in model.signature.inputs]
    (output,) = [spec.name for spec in model.signature.outputs][:1]
    batch = subject.batch(3)
    assert set(batch) == set(inputs)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # from threads other than the load's
        answers = list(pool.map(lambda _: model.predict(batch, [output]), range(2)))
    for answer in answers:
        assert output in answer
        assert np.asarray(answer[output]).shape[0] == 3
        assert np.isfinite(np.asarray(answer[output])).all()
    hint = model.size_hint()
    assert hint is None or hint > 0
    model.close()


def test_a_file_that_is_not_there_fails_the_load(subject: Subject, tmp_path: Path) -> None:
    file, options = subject.make(tmp_path, MB)
    file.unlink()
    # Whatever the framework raises (the cache wraps it), naming the file.
    with pytest.raises(Exception, match=re.escape(file.name)):
        load(subject, file, options)


def test_the_meter_grows_by_at_least_what_a_loaded_model_holds(
    subject: Subject, tmp_path: Path
) -> None:
    file, options = subject.make(tmp_path, 32 * MB)
    before = subject.meter()
    assert isinstance(before, int) and before > 0
    model = load(subject, file, options)
    model.predict(subject.batch(1), [model.signature.outputs[0].name])  # touched, resident
    after = subject.meter()
    assert isinstance(after, int)
    assert after - before >= 16 * MB  # at least half: frameworks may share or compress a little
    model.close()
