"""What every benchmark here needs: server processes, a closed-loop client, percentile tables.

    from harness import Server, closed_loop, free_port, table

A `Server` is a subprocess in a session of its own (so stopping it stops whatever it started,
`mesh up`'s etcd, pods and pullers included), logging to a file and ready when its readiness
probe answers, or when its log says `listening` (a pattern whose group is the port it chose).
`closed_loop` drives a target from a spawned process of its own (it shares no GIL with the
servers or the harness) with pre-serialized requests, so the client's protobuf or JSON cost is
nil and every server does all of the protocol work; `in_client_process` runs any such client.
Failures carry the server's log tail. `free_port` is mesh.lifecycle's, the one the tests use.
"""

from __future__ import annotations

import asyncio
import collections
import multiprocessing
import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mesh.lifecycle import free_port  # noqa: E402

__all__ = ["free_port"]  # and the rest, by name

INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"
STARTUP_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0


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
    """A server subprocess in its own session; `running()` starts it, waits, always stops it.

    Ready when `ready()` says so, or (ready None) when a line of its log matches `listening`,
    whose first group is the port it listens on (a server started on port 0): then `port`.
    """

    name: str
    argv: Sequence[str]
    log: Path
    ready: Callable[[], bool] | None
    env: dict[str, str] | None = None
    cwd: Path = ROOT
    proc: subprocess.Popen[bytes] | None = None
    listening: str | None = None
    port: int = 0
    killed: bool = False  # SIGTERM did not stop it within STOP_TIMEOUT_S
    startup_timeout: float = STARTUP_TIMEOUT_S
    stop_timeout: float = STOP_TIMEOUT_S

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_lines(self) -> list[str]:
        try:
            return self.log.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def log_tail(self, lines: int = 30) -> str:
        if not self.log.exists():
            return "(no log)"
        return "\n    ".join(self.log_lines()[-lines:]) or "(empty log)"

    def errors(self) -> list[str]:
        """The lines of its log that report an error or a traceback."""
        return [line for line in self.log_lines() if " ERROR " in line or "Traceback" in line]

    def _is_ready(self) -> bool:
        if self.ready is not None:
            return self.ready()
        assert self.listening is not None, "a Server needs `ready` or `listening`"
        for line in self.log_lines():
            if match := re.search(self.listening, line):
                self.port = int(match.group(1))
                return True
        return False

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
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with status {self.proc.returncode} before it was ready"
                    f"\n  command: {' '.join(self.argv)}\n  log:\n    {self.log_tail()}"
                )
            if self._is_ready():
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.name} was not ready within {self.startup_timeout:.0f}s\n"
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
            proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.killed = True
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        with suppress(ProcessLookupError):  # whatever it left behind in its session
            os.killpg(proc.pid, signal.SIGKILL)

    def cpu_seconds(self) -> float:
        """User + system CPU of the server and its live descendants."""
        total = 0.0
        tick = os.sysconf("SC_CLK_TCK")
        for pid in process_tree(self.pid):
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


def one_pod_mesh(work: Path, port: int) -> Server:
    """`mesh up` with one 256 MiB pod over an ONNX identity model, gRPC on `port` (not started).

    The benches of the router's control path (registration, misses) run against it.
    """
    from mesh import examples

    examples.onnx_identity(work / "models" / "identity", datatypes=("FP32",))
    argv = [
        sys.executable, "-m", "mesh", "up", "--storage", str(work / "models"), "--pods",
        "1", "--capacity", "256Mi", "--port", str(port), "--rest-port", str(free_port()),
    ]  # fmt: skip
    return Server("mesh up", argv, work / "mesh.log", grpc_ready(port))


def process_tree(root: int) -> list[int]:
    """`root` and its live descendants."""
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


# -- the machine and its processes ---------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process, all its threads (nan once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, all CPUs (/proc/stat)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return float("nan"), float("nan")
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / tick, steal / tick


def rss_bytes(pid: int) -> int:
    """Resident memory of one process (0 once it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def git_state() -> str:
    """HEAD, and whether mesh/ differs from it (others may be editing the tree)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "mesh"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" with uncommitted changes in mesh/" if dirty else "")


# -- the closed-loop client ------------------------------------------------------------------------

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 2**20),
    ("grpc.max_send_message_length", 64 * 2**20),
]


def percentile_ms(values: Any, q: float) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(np.percentile(values, q)) * 1e3 if values.size else float("nan")


async def _grpc_loop(
    target: str,
    payloads: list[bytes],
    sequence: list[int],
    concurrency: int,
    warmup: float,
    duration: float,
    watch: dict[str, int],
    max_errors: int,
    timeout: float,
    keep_latencies: bool,
) -> dict[str, Any]:
    from grpc import aio

    async with aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        call: Any = channel.unary_unary(
            INFER_PATH, request_serializer=None, response_deserializer=None
        )
        await asyncio.wait_for(channel.channel_ready(), 15)
        errors: collections.Counter[str] = collections.Counter()
        first_error: list[str] = []
        position = 0
        n = len(sequence)

        async def worker(deadline: float, record: list[float] | None) -> None:
            nonlocal position
            clock = time.perf_counter
            while sum(errors.values()) < max_errors:
                t0 = clock()
                if t0 >= deadline:
                    return
                body = payloads[sequence[position % n]]
                position += 1
                try:
                    await call(body, timeout=timeout)
                except aio.AioRpcError as exc:
                    errors[exc.code().name] += 1
                    if not first_error:
                        first_error.append(f"{exc.code().name}: {exc.details()}")
                    continue
                if record is not None:
                    record.append(clock() - t0)

        now = time.perf_counter()
        await asyncio.gather(*(worker(now + warmup, None) for _ in range(concurrency)))
        warm_errors = sum(errors.values())
        per_worker: list[list[float]] = [[] for _ in range(concurrency)]
        cpu0 = {name: process_cpu_seconds(pid) for name, pid in watch.items()}
        own0 = time.process_time()
        machine0 = machine_cpu()
        start = time.perf_counter()
        await asyncio.gather(*(worker(start + duration, rec) for rec in per_worker))
        elapsed = time.perf_counter() - start
        cpu = {name: process_cpu_seconds(pid) - cpu0[name] for name, pid in watch.items()}
        cpu["client"] = time.process_time() - own0
        machine1 = machine_cpu()
    latencies = [v for rec in per_worker for v in rec]
    result: dict[str, Any] = {
        "requests": len(latencies),
        "elapsed_s": elapsed,
        "rps": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile_ms(latencies, 50),
        "p99_ms": percentile_ms(latencies, 99),
        "mean_ms": float(np.mean(latencies)) * 1e3 if latencies else float("nan"),
        "error": first_error[0] if first_error else None,
        "errors": sum(errors.values()) - warm_errors,
        "errors_by_code": dict(errors),
        "cpu_s": cpu,
        "machine_s": {"busy": machine1[0] - machine0[0], "steal": machine1[1] - machine0[1]},
    }
    if keep_latencies:
        result["latencies"] = latencies
    return result


def _client_main(
    fn: Callable[..., Coroutine[Any, Any, Any]], args: tuple[Any, ...], out: Any
) -> None:
    try:
        out.send(asyncio.run(fn(*args)))
    except BaseException as exc:  # reported by the parent
        out.send({"crash": f"client crashed: {type(exc).__name__}: {exc}"})
    finally:
        out.close()


def in_client_process(
    fn: Callable[..., Coroutine[Any, Any, dict[str, Any]]], args: tuple[Any, ...], budget: float
) -> dict[str, Any]:
    """`asyncio.run(fn(*args))` in a spawned process of its own (`fn` a module-level coroutine
    function), its answer within `budget` seconds and a margin, or RuntimeError."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_client_main, args=(fn, args, send), name="bench-client")
    proc.start()
    send.close()
    try:
        if not receive.poll(budget + 90):
            raise RuntimeError("the client process did not report within its time budget")
        result: dict[str, Any] = receive.recv()
    except EOFError:
        raise RuntimeError(f"the client process died (exit code {proc.exitcode})") from None
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if result.get("crash"):
        raise RuntimeError(result["crash"])
    return result


def closed_loop(
    port: int | str,
    payload: bytes | list[bytes],
    concurrency: int,
    warmup: float,
    duration: float,
    sequence: list[int] | None = None,
    *,
    watch: dict[str, int] | None = None,
    max_errors: int = 1,
    timeout: float = 30.0,
    keep_latencies: bool = False,
) -> dict[str, Any]:
    """Requests/s and latency percentiles of `concurrency` callers, each sending a serialized
    ModelInferRequest as soon as its last answer came back: `payload`, or `payload[i]` for each
    `i` of `sequence` in turn (cycled), to spread requests over models.

    `port` is a loopback port or a host:port. The CPU seconds of each `watch` process (name:
    pid) and of the client over the measured window are in "cpu_s", the machine's in
    "machine_s". The callers stop at the first error (RuntimeError), or with max_errors > 1
    count up to that many ("errors", "errors_by_code") and return."""
    payloads = [payload] if isinstance(payload, bytes) else payload
    order = sequence if sequence is not None else [0]
    target = f"127.0.0.1:{port}" if isinstance(port, int) else port
    args = (target, payloads, order, concurrency, warmup, duration, watch or {}, max_errors,
            timeout, keep_latencies)  # fmt: skip
    result = in_client_process(_grpc_loop, args, warmup + duration)
    if max_errors == 1 and result.get("error"):
        raise RuntimeError(f"client against {target} (c={concurrency}): {result['error']}")
    return result


# -- reports -------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table; numeric columns right-aligned (and marked so), text
    columns left-aligned."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    numeric = [
        all(re.fullmatch(r"[-+~<>= ]*[\d.,]+\s*(ms|x|%)?", r[i]) or not r[i] for r in rows)
        for i in range(len(headers))
    ]

    def cell(text: str, i: int) -> str:
        return text.rjust(widths[i]) if numeric[i] else text.ljust(widths[i])

    line = "| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    rule = (
        "|"
        + "|".join(
            "-" * (w + 1) + (":" if num else "-") for w, num in zip(widths, numeric, strict=True)
        )
        + "|"
    )
    body = ["| " + " | ".join(cell(c, i) for i, c in enumerate(r)) + " |" for r in rows]
    return "\n".join([line, rule, *body])


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"
