"""A cold start from zero pods, split into its phases, against the same request with a pod up.

    .venv/bin/python bench/coldstart.py            # 2 cold starts, 20 warm requests
    .venv/bin/python bench/coldstart.py --rounds 3 --warm 50

Runs `mesh up --min-pods 0 --max-pods 1` (etcd, a router, the pool controller; no pod), registers
an XGBoost model made here, and per round sends one request to a pool at zero pods, then `--warm`
requests while its pod is up, then waits for the pool to drain back to zero. Each cold request
is split, from the mesh's own records and logs on one clock:

- hold -> spawn:   the router holds the request, publishes its demand; the controller starts a pod
- pod start:       the pod process starts and listens (imports, runtimes, puller socket)
- registration:    its instance record is written to etcd (and seen by this bench's watch)
- claim:           a router sees the pod, claims the load
- load:            the `loading` placement to the pod's "loaded" line (pull through the puller,
                   then the runtime's load)
- forward:         the model loaded to the answer

and compared with the warm requests' median (same model, same request, a pod up). Timings are
wall-clock from this machine; on a shared machine they move with its load: compare the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

from harness import ROOT, Server, child_env, free_port, table

PHASES = ("hold -> spawn", "pod start", "registration", "claim", "load", "forward")


def _log_times(log: Path, pod_id: str) -> dict[str, float]:
    """Wall-clock times of the controller's start and the pod's listen and registration lines
    for `pod_id` (mesh up and its children log with asctime, to one file)."""
    found: dict[str, float] = {}
    patterns = {
        "spawn": re.compile(rf"started {pod_id}\b"),
        "listen": re.compile(r"mesh\.pod\.server: pod listening"),
        "registered": re.compile(r"mesh\.cluster\.registration: registered under lease"),
        "loaded": re.compile(r"mesh\.pod\.cache: loaded fraud "),
    }
    for line in log.read_text(errors="replace").splitlines():
        try:
            at = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        for name, pattern in patterns.items():
            # The pod's lines count only after the controller started it.
            if name not in found and pattern.search(line) and (name == "spawn" or "spawn" in found):
                found[name] = at
    return found


class Watch:
    """A mirror of the mesh in a thread: when instances and placements first appeared."""

    def __init__(self, etcd: str) -> None:
        self.etcd = etcd
        self.seen: dict[tuple[str, str, str], float] = {}
        self.live: set[str] = set()  # pods with an instance record now
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(30)

    async def _run(self) -> None:
        from mesh.cluster.codec import Keys
        from mesh.cluster.etcd import EtcdConfig, EtcdStore
        from mesh.cluster.mirror import Mirror

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        store = EtcdStore(EtcdConfig.parse(self.etcd))
        mirror = Mirror(store, Keys("/mesh/"))

        def observe(changes: list[Any]) -> None:
            now = time.time()
            for c in changes:
                if c.kind == "instance":
                    (self.live.add if c.record is not None else self.live.discard)(c.key)
                if c.record is None:
                    continue
                if c.kind == "instance":
                    self.seen.setdefault(("instance", c.record.pod_id, ""), now)
                elif c.kind == "placement":
                    key = (c.record.state.value, c.record.pod_id, c.record.model_id)
                    self.seen.setdefault(key, now)

        mirror.subscribe(observe)
        await mirror.start()
        self._ready.set()
        await self._stop.wait()
        await mirror.aclose()
        await store.aclose()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url, timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="cold starts (default 2)")
    parser.add_argument("--warm", type=int, default=20, help="warm requests per round (20)")
    parser.add_argument(
        "--idle", type=float, default=3.0, help="--scale-down-after and --pool-window (3 s)"
    )
    args = parser.parse_args()

    import numpy as np
    import tritonclient.grpc as triton

    from mesh import examples

    work = Path(tempfile.mkdtemp(prefix="mesh-coldstart-"))
    models = work / "models"
    examples.xgboost_booster(models / "fraud" / "v3", n_trees=20)
    port, pool_port, etcd_hint = free_port(), free_port(), work / "up.log"
    up = Server(
        "mesh up",
        [sys.executable, "-m", "mesh", "up", "--storage", str(models), "--port", str(port),
         "--rest-port", str(free_port()), "--min-pods", "0", "--max-pods", "1",
         "--scale-down-after", str(args.idle), "--pool-window", str(args.idle),
         "--pool-interval", "0.25", "--pool-metrics-port", str(pool_port)],
        etcd_hint,
        ready=lambda: "Register models" in etcd_hint.read_text(errors="replace"),
        env=child_env(),
    )  # fmt: skip
    pool_url = f"http://127.0.0.1:{pool_port}/metrics"
    pods = 'mesh_pool_pods{pool="default"}'
    rows: list[list[str]] = []
    with up.running():
        etcd = re.search(r"etcd +(http://\S+)", etcd_hint.read_text()).group(1)  # type: ignore[union-attr]
        subprocess.run(
            [sys.executable, "-m", "mesh", "register", "fraud", "--format", "xgboost",
             "--storage-path", "fraud/v3", "--router", f"127.0.0.1:{port}"],
            check=True, capture_output=True, env=child_env(),
        )  # fmt: skip
        watch = Watch(etcd)
        watch.start()
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        x = triton.InferInput("input__0", [1, 64], "FP32")
        x.set_data_from_numpy(np.zeros((1, 64), np.float32))
        colds, warms = [], []
        try:
            for n in range(args.rounds):
                pod_id = f"pod-{n}"
                sent = time.time()
                client.infer("fraud", [x], client_timeout=600)
                answered = time.time()
                s = watch.seen
                deadline = time.monotonic() + 10  # the watch may lag the answer a little
                while ("loading", pod_id, "fraud") not in s and time.monotonic() < deadline:
                    time.sleep(0.05)
                logs = _log_times(etcd_hint, pod_id)
                marks = [
                    sent,
                    logs.get("spawn", sent),
                    logs.get("listen", sent),
                    s.get(("instance", pod_id, ""), sent),
                    s.get(("loading", pod_id, "fraud"), sent),
                    logs.get("loaded", sent),
                    answered,
                ]
                phases = [max(b - a, 0.0) for a, b in itertools.pairwise(marks)]
                colds.append((answered - sent, phases))
                for _ in range(args.warm):
                    started = time.perf_counter()
                    client.infer("fraud", [x], client_timeout=60)
                    warms.append(time.perf_counter() - started)
                deadline = time.monotonic() + 120
                while _metric(pool_url, pods) != 0 and time.monotonic() < deadline:
                    time.sleep(0.25)  # polling the pool's gauge, not standing in for it
                # The next cold start must find the pod gone from the router's view too.
                while watch.live and time.monotonic() < deadline:
                    time.sleep(0.25)
        finally:
            watch.stop()
    warm = statistics.median(warms)
    for n, (total, phases) in enumerate(colds):
        rows.append(
            [f"cold {n + 1}", f"{total:.2f}", *(f"{p:.2f}" for p in phases), f"{total / warm:.0f}x"]
        )
    rows.append(["warm (median)", f"{warm:.4f}", *("" for _ in PHASES), "1x"])
    print(table(["request", "total s", *PHASES, "vs warm"], rows))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
