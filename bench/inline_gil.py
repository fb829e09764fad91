"""A short predict timed in the pool while the event loop keeps the GIL busy (mesh.pod.inline).

    PYTHONPATH=. .venv/bin/python bench/inline_gil.py              # ~10 s
    PYTHONPATH=. .venv/bin/python bench/inline_gil.py --seconds 2

One XGBoost booster (100 trees, depth 6, 64 features, nthread 1, as in bench/peers.py) predicts
one row through `InlineCalls` (threshold 0.5 ms, the pod's default) from 32 concurrent tasks,
beside 32 tasks that stand for the rest of the pod's request handling: pure Python on the loop
(~0.3 ms a turn, decoding, accounting), which holds the GIL. Each predict is timed where it ran,
by wall clock and by the thread's own CPU time (time.thread_time).

The report gives, for the calls that ran in the pool and those that ran on the loop: the count,
the mean wall time and the mean thread CPU time; with the predict's cost measured alone first.
A predict in a worker thread releases the GIL inside the library and waits to take it back
while the loop runs Python, so its wall time there reads several times its cost; its thread CPU
time does not count that wait. No verdict is printed: the numbers are the finding.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from mesh import examples
from mesh.pod.inline import InlineCalls

THRESHOLD = 0.0005  # the pod's --inline-below default


def _loop_work(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def _run(
    booster: Any, row: np.ndarray, seconds: float
) -> dict[str, list[tuple[float, float]]]:
    seen: dict[str, list[tuple[float, float]]] = {"pool": [], "loop": []}
    main = threading.main_thread()

    def predict() -> None:
        wall, cpu = time.perf_counter(), time.thread_time()
        booster.inplace_predict(row, validate_features=False)
        where = "loop" if threading.current_thread() is main else "pool"
        seen[where].append((time.perf_counter() - wall, time.thread_time() - cpu))

    stop = time.perf_counter() + seconds
    with ThreadPoolExecutor(4) as pool:
        calls = InlineCalls(pool, THRESHOLD)

        async def caller() -> None:
            while time.perf_counter() < stop:
                await calls.run("xgb", 100, predict)
                await asyncio.sleep(0)

        async def handler() -> None:
            while time.perf_counter() < stop:
                _loop_work(0.0003)
                await asyncio.sleep(0)

        await asyncio.gather(*(caller() for _ in range(32)), *(handler() for _ in range(32)))
    return seen


def _line(name: str, timings: list[tuple[float, float]]) -> str:
    if not timings:
        return f"{name:<22} {0:>7}"
    wall = statistics.fmean(t[0] for t in timings) * 1e3
    cpu = statistics.fmean(t[1] for t in timings) * 1e3
    return f"{name:<22} {len(timings):>7} {wall:>10.3f} {cpu:>10.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    import xgboost as xgb

    with tempfile.TemporaryDirectory() as work:
        path = examples.xgboost_booster(Path(work), n_features=64)
        booster = xgb.Booster(model_file=str(path))
    booster.set_param({"nthread": 1})
    row = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    alone = []
    for _ in range(2000):
        wall, cpu = time.perf_counter(), time.thread_time()
        booster.inplace_predict(row, validate_features=False)
        alone.append((time.perf_counter() - wall, time.thread_time() - cpu))
    seen = asyncio.run(_run(booster, row, args.seconds))
    print(f"{'calls':<22} {'count':>7} {'wall ms':>10} {'cpu ms':>10}")
    print(_line("alone (no load)", alone[200:]))
    print(_line("in the pool", seen["pool"]))
    print(_line("on the loop", seen["loop"]))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
