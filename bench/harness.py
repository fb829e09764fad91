"""What every benchmark here needs: server processes, a closed-loop client, percentile tables.

    from harness import Server, closed_loop, free_port, table

A `Server` is a subprocess in a session of its own (so stopping it stops whatever it started,
`mesh up`'s etcd, pods and pullers included), logging to a file and ready when its readiness
probe answers. `closed_loop` drives a target from a spawned process of its own (it shares no GIL
with the servers or the harness) with pre-serialized requests, so the client's protobuf or JSON
cost is nil and every server does all of the protocol work. Failures carry the server's log tail.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"
STARTUP_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a mesh child: this source tree first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def grpc_ready(port: int, *models: str) -> Callable[[], bool]:
    """A readiness probe: the v2 ServerReady on `port` says true, or, given models, ModelReady
    says true for each of them."""

    def probe() -> bool:
        import grpc

        from mesh.gen import grpc_predict_v2_pb2 as pb

        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            server: Any = channel.unary_unary(
                "/inference.GRPCInferenceService/ServerReady",
                request_serializer=pb.ServerReadyRequest.SerializeToString,
                response_deserializer=pb.ServerReadyResponse.FromString,
            )
            model: Any = channel.unary_unary(
                "/inference.GRPCInferenceService/ModelReady",
                request_serializer=pb.ModelReadyRequest.SerializeToString,
                response_deserializer=pb.ModelReadyResponse.FromString,
            )
            try:
                if not models:
                    return bool(server(pb.ServerReadyRequest(), timeout=1).ready)
                return all(model(pb.ModelReadyRequest(name=m), timeout=1).ready for m in models)
            except grpc.RpcError:
                return False

    return probe


@dataclass
class Server:
    """A server subprocess in its own session; `running()` starts it, waits, always stops it."""

    name: str
    argv: Sequence[str]
    log: Path
    ready: Callable[[], bool]
    env: dict[str, str] | None = None
    cwd: Path = ROOT
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "(no log)"
        return "\n    ".join(text) or "(empty log)"

    def start(self) -> Server:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                list(self.argv),
                cwd=self.cwd,
                env=self.env if self.env is not None else child_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with status {self.proc.returncode} before it was ready"
                    f"\n  command: {' '.join(self.argv)}\n  log:\n    {self.log_tail()}"
                )
            if self.ready():
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.name} was not ready within {STARTUP_TIMEOUT_S:.0f}s\n"
                    f"  log:\n    {self.log_tail()}"
                )
            time.sleep(0.2)  # polling a child's readiness, not standing in for it

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        with suppress(ProcessLookupError):  # whatever it left behind in its session
            os.killpg(proc.pid, signal.SIGKILL)

    def cpu_seconds(self) -> float:
        """User + system CPU of the server and its live descendants."""
        total = 0.0
        tick = os.sysconf("SC_CLK_TCK")
        for pid in _tree(self.pid):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick
        return total

    @contextmanager
    def running(self) -> Iterator[Server]:
        try:
            yield self.start()
        finally:
            self.stop()


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


# -- the closed-loop client ------------------------------------------------------------------------


def percentile_ms(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) * 1e3 if len(values) else float("nan")


async def _grpc_loop(
    target: str,
    payloads: list[bytes],
    sequence: list[int],
    concurrency: int,
    warmup: float,
    duration: float,
) -> dict[str, Any]:
    from grpc import aio

    options = [
        ("grpc.max_receive_message_length", 64 * 2**20),
        ("grpc.max_send_message_length", 64 * 2**20),
    ]
    async with aio.insecure_channel(target, options=options) as channel:
        call: Any = channel.unary_unary(
            INFER_PATH, request_serializer=None, response_deserializer=None
        )
        await asyncio.wait_for(channel.channel_ready(), 15)
        first_error: list[str] = []
        position = 0
        n = len(sequence)

        async def worker(deadline: float, record: list[float] | None) -> None:
            nonlocal position
            clock = time.perf_counter
            while not first_error:
                t0 = clock()
                if t0 >= deadline:
                    return
                body = payloads[sequence[position % n]]
                position += 1
                try:
                    await call(body, timeout=30)
                except aio.AioRpcError as exc:
                    first_error.append(f"{exc.code().name}: {exc.details()}")
                    return
                if record is not None:
                    record.append(clock() - t0)

        now = time.perf_counter()
        await asyncio.gather(*(worker(now + warmup, None) for _ in range(concurrency)))
        per_worker: list[list[float]] = [[] for _ in range(concurrency)]
        start = time.perf_counter()
        await asyncio.gather(*(worker(start + duration, rec) for rec in per_worker))
        elapsed = time.perf_counter() - start
    latencies = [v for rec in per_worker for v in rec]
    return {
        "requests": len(latencies),
        "elapsed_s": elapsed,
        "rps": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile_ms(latencies, 50),
        "p99_ms": percentile_ms(latencies, 99),
        "error": first_error[0] if first_error else None,
    }


def _client_main(args: tuple[str, list[bytes], list[int], int, float, float], out: Any) -> None:
    try:
        out.send(asyncio.run(_grpc_loop(*args)))
    except BaseException as exc:  # reported by the parent
        out.send({"error": f"client crashed: {type(exc).__name__}: {exc}"})
    finally:
        out.close()


def closed_loop(
    port: int,
    payload: bytes | list[bytes],
    concurrency: int,
    warmup: float,
    duration: float,
    sequence: list[int] | None = None,
) -> dict[str, Any]:
    """Requests/s and latency percentiles of `concurrency` callers, each sending a serialized
    ModelInferRequest as soon as its last answer came back: `payload`, or `payload[i]` for each
    `i` of `sequence` in turn (cycled), to spread requests over models."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    payloads = [payload] if isinstance(payload, bytes) else payload
    order = sequence if sequence is not None else [0]
    args = (f"127.0.0.1:{port}", payloads, order, concurrency, warmup, duration)
    proc = ctx.Process(target=_client_main, args=(args, send), name="bench-client")
    proc.start()
    send.close()
    try:
        if not receive.poll(warmup + duration + 90):
            raise RuntimeError("the client process did not report within its time budget")
        result: dict[str, Any] = receive.recv()
    except EOFError:
        raise RuntimeError(f"the client process died (exit code {proc.exitcode})") from None
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if result.get("error"):
        raise RuntimeError(f"client against port {port} (c={concurrency}): {result['error']}")
    return result


# -- reports -------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table, numbers right-aligned."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).rjust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])
