"""The router->pod leg alone: what one unary call costs the router's process, by transport.

    python bench/pod_transport.py                  # 3 s per cell, c=1 and c=32
    python bench/pod_transport.py --seconds 5 --rounds 3
    python bench/pod_transport.py --tls            # and both over mutual TLS

A child process serves an instant answer (the pod's gRPC server shape: a generic grpc.aio
handler, and mesh.frames.FrameServer, both returning fixed bytes) so that the pod costs nearly
nothing; this process calls it the way the router does, through the router's own clients
(mesh.router.grpcpods), and measures its own CPU per call (time.process_time) with p50 and
calls/s, closed loop at concurrency 1 and 32. Variants, each in alternating order per round:

- grpc: `PodClient` as shipped (one channel, the mm-model-id metadata on each call);
- grpc-tuned: the same client with retries off (`grpc.enable_retries` 0), no per-call
  metadata, and `grpc.so_reuseport` 0;
- grpc-4ch: four channels per pod, calls spread round robin;
- frames: `FramePodClient` (mesh.frames over one TCP connection);
- with --tls, grpc-tls and frames-tls: `PodClient` and `FramePodClient` over mutual TLS
  (mesh.tls, the router's --pod-tls-* and the pod's --tls-*), to listeners of the same child
  with a certificate made for the run (mesh.up.LocalTLS, openssl); the connection's handshake
  happens before the measured calls, so what they show is the per-call cost of the encryption.

CPU per call is what this process spent: the client leg of the router's hop. The child's CPU
is reported too (the pod's side of the transport).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from grpc import aio  # noqa: E402

from mesh.router.grpcpods import INFER, FramePodClient, PodClient  # noqa: E402

REQUEST = b"\x0a\x05model" + b"\x00" * 300  # a small request: field 1 and some bytes
RESPONSE = b"\x0a\x05model" + b"\x01" * 100
LIMIT = 64 * 2**20


def _credentials(tls_dir: Path) -> tuple[Any, Any]:
    """(the pod's ServerCredentials, the router's ClientCredentials) from LocalTLS's files."""
    from mesh.settings import ClientTLS, ServerTLS
    from mesh.tls import ClientCredentials, ServerCredentials
    from mesh.up import TLS_SERVER_NAME

    server = ServerCredentials.load(
        ServerTLS(cert=tls_dir / "pod.crt", key=tls_dir / "pod.key", ca=tls_dir / "ca.crt")
    )
    client = ClientCredentials.load(
        ClientTLS(
            ca=tls_dir / "ca.crt", cert=tls_dir / "router.crt", key=tls_dir / "router.key",
            server_name=TLS_SERVER_NAME,
        ),
        "--pod-tls",
    )  # fmt: skip
    return server, client


async def _serve(tls_dir: Path | None) -> None:
    """The child: a gRPC server and a frame listener, both answering RESPONSE at once; with
    `tls_dir`, a second pair over mutual TLS."""
    import grpc

    from mesh.frames import FrameServer

    async def infer(request: bytes, context: Any) -> bytes:
        return RESPONSE

    async def framed(data: bytes, model_id: str) -> bytes:
        return RESPONSE

    server = aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "inference.GRPCInferenceService",
                {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)},
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    ports = [port]
    tls = _credentials(tls_dir)[0] if tls_dir is not None else None
    if tls is not None:
        ports.append(server.add_secure_port("127.0.0.1:0", tls.grpc))
    await server.start()
    frames = FrameServer(framed, LIMIT)
    ports.insert(1, await frames.start("127.0.0.1", 0))
    if tls is not None:
        tls_frames = FrameServer(framed, LIMIT, ssl_context=tls.context)
        ports.append(await tls_frames.start("127.0.0.1", 0))
    print(" ".join(map(str, ports)), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


class Tuned:
    """The gRPC client with the options that might matter, and no per-call metadata."""

    def __init__(self, address: str, channels: int = 1, tuned: bool = True) -> None:
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", LIMIT),
            ("grpc.max_send_message_length", LIMIT),
        ]
        if tuned:
            options += [("grpc.enable_retries", 0), ("grpc.so_reuseport", 0)]
        self.channels = [aio.insecure_channel(address, options=options) for _ in range(channels)]
        self._calls = itertools.cycle([c.unary_unary(INFER) for c in self.channels])

    async def infer(self, data: bytes, model_id: str, timeout: float | None) -> bytes:
        response: bytes = await next(self._calls)(data, timeout=timeout)
        return response

    async def aclose(self) -> None:
        for c in self.channels:
            await c.close()


async def _drive(client: Any, concurrency: int, seconds: float) -> tuple[float, float, list[float]]:
    """(CPU seconds of this process, wall seconds, each call's latency)."""
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < stop:
            started = time.perf_counter()
            await client.infer(REQUEST, "model", 10.0)
            latencies.append(time.perf_counter() - started)

    for _ in range(50):  # warm up: connections made, caches filled
        await client.infer(REQUEST, "model", 10.0)
    cpu = time.process_time()
    wall = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.process_time() - cpu, time.monotonic() - wall, latencies


def _cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _main(
    child: subprocess.Popen[bytes], seconds: float, rounds: int, tls_dir: Path | None
) -> None:
    assert child.stdout is not None
    ports = [f"127.0.0.1:{int(p)}" for p in child.stdout.readline().split()]
    address, data_address = ports[0], ports[1]
    variants: dict[str, Any] = {
        "grpc": lambda: PodClient("p", address, LIMIT),
        "grpc-tuned": lambda: Tuned(address),
        "grpc-4ch": lambda: Tuned(address, channels=4, tuned=False),
        "frames": lambda: FramePodClient("p", address, LIMIT, data_address),
    }
    if tls_dir is not None:
        tls = _credentials(tls_dir)[1]
        tls_address, tls_data = ports[2], ports[3]
        variants["grpc-tls"] = lambda: PodClient("p", tls_address, LIMIT, tls=tls)
        variants["frames-tls"] = lambda: FramePodClient("p", tls_address, LIMIT, tls_data, tls=tls)
    print(
        f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        f"{seconds:g} s per cell, {rounds} rounds in alternating order"
    )
    print("| variant | c | calls/s | p50 us | client CPU us/call | server CPU us/call |")
    print("|---|--:|--:|--:|--:|--:|")
    for concurrency in (1, 32):
        # variant -> per round: (client CPU s, server CPU s, wall s, latencies)
        cells: dict[str, list[tuple[float, float, float, list[float]]]] = {v: [] for v in variants}
        for r in range(rounds):
            for name in list(variants) if r % 2 == 0 else list(reversed(variants)):
                client = variants[name]()
                server_cpu = _cpu_of(child.pid)
                cpu, wall, latencies = await _drive(client, concurrency, seconds)
                cells[name].append((cpu, _cpu_of(child.pid) - server_cpu, wall, latencies))
                await client.aclose()
        for name, runs in cells.items():
            lat = [x for r in runs for x in r[3]]
            print(
                f"| {name} | {concurrency} | {len(lat) / sum(r[2] for r in runs):,.0f} | "
                f"{statistics.median(lat) * 1e6:.0f} | "
                f"{sum(r[0] for r in runs) / len(lat) * 1e6:.1f} | "
                f"{sum(r[1] for r in runs) / len(lat) * 1e6:.1f} |",
                flush=True,
            )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per cell and round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per cell")
    parser.add_argument(
        "--tls", action="store_true", help="also grpc-tls and frames-tls (mutual TLS; openssl)"
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tls-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.tls_dir))
        return
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        tls_dir = None
        if args.tls:
            from mesh.up import LocalTLS

            tls_dir = LocalTLS.make(Path(tmp) / "tls").directory
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve",
             *(["--tls-dir", str(tls_dir)] if tls_dir is not None else [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        try:
            asyncio.run(_main(child, args.seconds, args.rounds, tls_dir))
        finally:
            child.kill()
            child.wait()


if __name__ == "__main__":
    main()
