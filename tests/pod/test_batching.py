"""Adaptive batching: concurrent requests for one model answered by one framework call.

Through a real pod with a real XGBoost booster, and the batcher's scheduling alone with a model
whose framework call the test holds, so that "requests that came while the model was busy
form the next call" is checked without timing anything.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import xgboost as xgb

from mesh import examples
from mesh.errors import InvalidRequest, RuntimeFailure
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.inference import InferRequest
from mesh.pod.batching import Batcher, BatchPolicy
from mesh.pod.wire import message_of, request_of
from mesh.tensors import Signature, TensorSpec
from tests.helpers import RunningPod, infer_request, output_array, running_pod


def batch_metrics(pod: RunningPod) -> tuple[float, float]:
    """(framework calls, rows) of batching models, from the pod's metrics."""
    text = pod.metrics_text()
    count = re.search(r"^mesh_pod_batch_rows_count (\S+)$", text, re.M)
    total = re.search(r"^mesh_pod_batch_rows_sum (\S+)$", text, re.M)
    assert count and total, "the pod exports no mesh_pod_batch_rows histogram"
    return float(count.group(1)), float(total.group(1))


@pytest.fixture(scope="module")
def batching_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("batching")
    for name, options in {
        # A long delay: a batch starts only when it is full, so the test can count on it.
        "xgb-batched": {"batch.max_size": "16", "batch.max_delay_ms": "10000"},
        "xgb-plain": {},
        "xgb-bad-option": {"batch.max_size": "zero"},
        "xgb-unknown-option": {"batch.max_size": "4", "batch.colour": "blue"},
    }.items():
        examples.xgboost_booster(root / name, n_trees=10)
        (root / name / "mesh.json").write_text(json.dumps({"options": options}))
    return root


@pytest.fixture
def pod(batching_models: Path) -> Any:
    with running_pod(models=batching_models) as running:
        yield running


def booster(root: Path, name: str) -> xgb.Booster:
    return xgb.Booster(model_file=str(root / name / "model.ubj"))


def test_concurrent_requests_become_one_call_and_each_gets_its_own_rows(
    pod: RunningPod, batching_models: Path
) -> None:
    pod.v2.ModelMetadata(pb.ModelMetadataRequest(name="xgb-batched"))  # loaded before timing
    rows = [np.random.default_rng(i).standard_normal((1, 64)).astype(np.float32) for i in range(16)]
    futures = [pod.v2.ModelInfer.future(infer_request("xgb-batched", input__0=x)) for x in rows]
    answers = [f.result(timeout=60) for f in futures]

    want = booster(batching_models, "xgb-batched")
    for x, answer in zip(rows, answers, strict=True):
        np.testing.assert_allclose(
            output_array(answer, "output__0"), want.inplace_predict(x), rtol=1e-6
        )
    assert batch_metrics(pod) == (1.0, 16.0)  # one framework call for the sixteen


def test_a_bad_request_fails_alone_and_a_large_one_runs_alone(
    pod: RunningPod, batching_models: Path
) -> None:
    pod.v2.ModelMetadata(pb.ModelMetadataRequest(name="xgb-batched"))
    with pytest.raises(grpc.RpcError) as err:  # checked before it joins a batch
        pod.v2.ModelInfer(infer_request("xgb-batched", input__0=np.zeros((1, 3), np.float32)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    large = np.random.default_rng(99).standard_normal((40, 64)).astype(np.float32)
    answer = pod.v2.ModelInfer(infer_request("xgb-batched", input__0=large), timeout=30)
    want = booster(batching_models, "xgb-batched").inplace_predict(large)
    np.testing.assert_allclose(output_array(answer, "output__0"), want, rtol=1e-6)
    assert batch_metrics(pod) == (0.0, 0.0)  # neither waited for a batch


def test_batching_is_off_unless_a_model_asks(pod: RunningPod) -> None:
    x = np.zeros((1, 64), np.float32)
    futures = [pod.v2.ModelInfer.future(infer_request("xgb-plain", input__0=x)) for _ in range(8)]
    for f in futures:
        f.result(timeout=60)
    assert batch_metrics(pod) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("model", "named"),
    [("xgb-bad-option", "batch.max_size"), ("xgb-unknown-option", "batch.colour")],
)
def test_bad_batching_options_fail_the_load_by_name(
    pod: RunningPod, model: str, named: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        pod.v2.ModelInfer(infer_request(model, input__0=np.zeros((1, 64), np.float32)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert named in (err.value.details() or "")


# -- the scheduling, with a framework call the test holds ------------------------------------------


class HeldModel:
    """y = 2x, recording the rows of every call; a call waits while `hold` is clear."""

    platform = "held"
    signature = Signature.of([TensorSpec("x", "FP32", (-1, 2))], [TensorSpec("y", "FP32", (-1, 2))])

    def __init__(self, flat: bool = False) -> None:
        self.calls: list[int] = []
        self.hold = threading.Event()
        self.hold.set()
        self.started = threading.Event()
        self.flat = flat  # answers one number whatever the batch: no batch dimension

    def predict(
        self, inputs: Mapping[str, np.ndarray[Any, Any]], outputs: Sequence[str]
    ) -> Mapping[str, np.ndarray[Any, Any]]:
        self.calls.append(len(inputs["x"]))
        self.started.set()
        assert self.hold.wait(30)
        return {"y": np.zeros((1, 2), np.float32) if self.flat else inputs["x"] * 2}

    def size_hint(self) -> int | None:
        return None

    def close(self) -> None:
        pass


def request(value: float, rows: int = 1) -> InferRequest:
    return request_of(infer_request("held", x=np.full((rows, 2), value, np.float32)))


async def until(check: Any) -> None:
    for _ in range(2000):
        if check():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never held")


async def test_requests_that_come_while_the_model_is_busy_form_the_next_call() -> None:
    model = HeldModel()
    model.hold.clear()
    with ThreadPoolExecutor(2) as pool:
        batcher = Batcher(model, BatchPolicy(max_size=8, concurrency=1), pool)  # type: ignore[arg-type]
        first = asyncio.create_task(batcher.infer(request(1), "held"))
        await asyncio.to_thread(model.started.wait, 30)  # a lone request runs at once
        rest = [asyncio.create_task(batcher.infer(request(v), "held")) for v in range(2, 7)]
        await until(lambda: sum(len(q) for q in batcher._queues.values()) == 5)
        model.hold.set()
        answers = await asyncio.gather(first, *rest)
    assert model.calls == [1, 5]
    for value, answer in zip(range(1, 7), answers, strict=True):
        assert output_array(message_of(answer), "y").tolist() == [[2.0 * value, 2.0 * value]]


async def test_a_caller_that_gives_up_is_left_out_of_its_batch() -> None:
    model = HeldModel()
    model.hold.clear()
    with ThreadPoolExecutor(2) as pool:
        # Two rows a call: the request given up must not take the place of the one after it.
        batcher = Batcher(model, BatchPolicy(max_size=2, concurrency=1), pool)  # type: ignore[arg-type]
        first = asyncio.create_task(batcher.infer(request(1), "held"))
        await asyncio.to_thread(model.started.wait, 30)
        waiting = [asyncio.create_task(batcher.infer(request(v), "held")) for v in (2, 3, 4)]
        await until(lambda: sum(len(q) for q in batcher._queues.values()) == 3)
        waiting[1].cancel()
        model.hold.set()
        await first
        kept = await asyncio.gather(waiting[0], waiting[2])
    assert model.calls == [1, 2]
    assert [output_array(message_of(a), "y")[0, 0] for a in kept] == [4.0, 8.0]


async def test_a_model_without_a_batch_dimension_fails_each_request_of_the_call() -> None:
    model = HeldModel(flat=True)
    model.hold.clear()
    with ThreadPoolExecutor(2) as pool:
        batcher = Batcher(model, BatchPolicy(max_size=8, concurrency=1), pool)  # type: ignore[arg-type]
        first = asyncio.create_task(batcher.infer(request(1), "held"))
        await asyncio.to_thread(model.started.wait, 30)
        batched = [asyncio.create_task(batcher.infer(request(v), "held")) for v in (2, 3)]
        await until(lambda: sum(len(q) for q in batcher._queues.values()) == 2)
        model.hold.set()
        await first  # alone: its one row matches the model's one row
        for task in batched:
            with pytest.raises(RuntimeFailure, match="no batch dimension"):
                await task


def test_policy_from_options() -> None:
    assert BatchPolicy.from_options("m", {"nthread": "1"}) is None
    assert BatchPolicy.from_options("m", {"batch.max_size": "32", "batch.max_delay_ms": "2"}) == (
        BatchPolicy(max_size=32, max_delay=0.002, concurrency=2)
    )
    for bad in ({"batch.max_size": "0"}, {"batch.max_size": "nan"}, {"batch.max_delay_ms": "1"}):
        with pytest.raises(InvalidRequest):
            BatchPolicy.from_options("m", bad)
