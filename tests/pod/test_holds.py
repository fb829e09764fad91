"""A request's hold on its model lasts as long as the framework call, even when the caller goes.

A caller that gives up (a deadline, a cancelled stream) must not let the model be unloaded,
evicted or demoted while a worker thread is still inside its predict.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from mesh.pod.wire import request_of
from mesh.runtimes.registry import RuntimeRegistry
from tests.fakes import FakeRuntime
from tests.helpers import infer_request, running_pod


@pytest.mark.parametrize("batched", [False, True], ids=["unbatched", "batched-large"])
def test_a_cancelled_request_keeps_its_hold_until_the_framework_call_ends(
    tmp_path: Path, batched: bool
) -> None:
    (tmp_path / "held").mkdir()
    (tmp_path / "held" / "model.fake").write_bytes(b"\0" * 100)
    if batched:  # a request over batch.max_size runs alone, outside any batch
        config = '{"format": "fake", "options": {"batch.max_size": "1"}}'
        (tmp_path / "held" / "mesh.json").write_text(config)
    runtime = FakeRuntime()
    runtime.predict_gate = threading.Event()
    rows = 4 if batched else 1
    request = request_of(infer_request("held", x=np.ones(rows, np.float32)))
    with running_pod(runtimes=RuntimeRegistry([runtime]), models=str(tmp_path)) as pod:
        plane = pod.plane

        async def scenario() -> tuple[int, bool, int]:
            await plane.infer(request_of(infer_request("held", x=np.ones(1, np.float32))))
            assert (plane._batchers["held"][1] is not None) == batched
            runtime.predict_gate.clear()  # type: ignore[union-attr]
            runtime.predicting.clear()
            task = asyncio.create_task(plane.infer(request))
            await asyncio.to_thread(runtime.predicting.wait, 30)
            task.cancel()
            for _ in range(5):  # let the task take its cancellation
                await asyncio.sleep(0)
            held = plane.cache._entries["held"].in_flight
            done = task.done()
            runtime.predict_gate.set()  # type: ignore[union-attr]
            with pytest.raises(asyncio.CancelledError):
                await task
            return held, done, plane.cache._entries["held"].in_flight

        held, done, after = pod.run(scenario())
    # While predict still ran, the cancelled request still held the model.
    assert (held, done) == (1, False)
    assert after == 0  # and let go once the call ended
