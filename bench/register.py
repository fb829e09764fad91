"""Registering many models through the management API: one call per model against batches.

    .venv/bin/python bench/register.py                       # 100,000 models, both ways
    .venv/bin/python bench/register.py --models 20000 --only batch --batch 1000
    .venv/bin/python bench/register.py --models 20000 --only single --profile out.svg

One `mesh up` (etcd, a router, one pod) over a directory holding one tiny ONNX model. Each
mode registers its own `--models` fresh ids, all pointing at that model:

- **single**: `RegisterModel`, one call per model, 64 calls in flight (what the controller and
  `mesh register` do one model at a time);
- **batch**: `RegisterModels`, `--batch` models per call, 4 calls in flight (what
  `mesh register --file` does).

Each call returns once the router's mirror holds what it wrote, so a model is readable from
the router when its call returns. The issue's target: 100,000 models in under a minute
(>= 1,667 models/s). `--profile FILE` records the router with py-spy (collapsed stacks).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import free_port, one_pod_mesh, table


async def register_single(port: int, ids: list[str], in_flight: int = 64) -> float:
    """RegisterModel per id, `in_flight` calls at a time; the seconds it took."""
    from grpc import aio

    from mesh.gen import management_pb2 as mpb
    from mesh.gen import management_pb2_grpc

    started = time.perf_counter()
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = management_pb2_grpc.ManagementStub(channel)  # type: ignore[no-untyped-call]
        queue = list(reversed(ids))

        async def worker() -> None:
            while queue:
                model_id = queue.pop()
                await stub.RegisterModel(
                    mpb.RegisterModelRequest(
                        model_id=model_id, format="onnx", storage_path="identity"
                    ),
                    timeout=120,
                )

        await asyncio.gather(*(worker() for _ in range(in_flight)))
    return time.perf_counter() - started


async def register_batch(port: int, ids: list[str], batch: int, in_flight: int = 4) -> float:
    """RegisterModels with `batch` ids per call, `in_flight` calls at a time; the seconds."""
    from grpc import aio

    from mesh.gen import management_pb2 as mpb
    from mesh.gen import management_pb2_grpc

    chunks = [ids[i : i + batch] for i in range(0, len(ids), batch)]
    requests = [
        mpb.RegisterModelsRequest(
            models=[
                mpb.RegisterModelRequest(model_id=m, format="onnx", storage_path="identity")
                for m in chunk
            ]
        )
        for chunk in chunks
    ]
    started = time.perf_counter()
    async with aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 64 << 20)]
    ) as channel:
        stub = management_pb2_grpc.ManagementStub(channel)  # type: ignore[no-untyped-call]
        queue = list(reversed(requests))

        async def worker() -> None:
            while queue:
                request = queue.pop()
                response = await stub.RegisterModels(request, timeout=300)
                failed = [r for r in response.results if r.code]
                if failed:
                    raise RuntimeError(f"{len(failed)} registrations failed: {failed[0]}")

        await asyncio.gather(*(worker() for _ in range(in_flight)))
    return time.perf_counter() - started


def _router_pid(root: int) -> int:
    """The router's process under `mesh up` (the one that listens for the management API)."""
    out = subprocess.run(
        ["ps", "-o", "pid=,args=", "--ppid", str(root)], capture_output=True, text=True
    ).stdout
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        if " router" in args:
            return int(pid)
    return root  # the router runs in `mesh up`'s own process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=100_000, help="models per mode")
    parser.add_argument("--batch", type=int, default=1000, help="models per RegisterModels call")
    parser.add_argument("--only", choices=["single", "batch"], help="one mode")
    parser.add_argument("--profile", help="py-spy collapsed stacks of the router to FILE.MODE.txt")
    args = parser.parse_args(argv)

    modes = [args.only] if args.only else ["single", "batch"]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mesh-register-") as tmp:
        work = Path(tmp)
        port = free_port()
        mesh = one_pod_mesh(work, port)
        with mesh.running():
            asyncio.run(register_single(port, ["warm-up"]))
            for mode in modes:
                ids = [f"{mode}-{i:07d}" for i in range(args.models)]
                spy = None
                if args.profile:
                    spy = subprocess.Popen(
                        [str(Path(sys.executable).parent / "py-spy"), "record", "-o",
                         f"{args.profile}.{mode}.txt", "--format", "raw", "-p",
                         str(_router_pid(mesh.pid)), "--rate", "200", "--nonblocking"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )  # fmt: skip
                    time.sleep(1)
                if mode == "single":
                    seconds = asyncio.run(register_single(port, ids))
                else:
                    seconds = asyncio.run(register_batch(port, ids, args.batch))
                if spy is not None:
                    spy.send_signal(2)
                    spy.wait(60)
                rate = len(ids) / seconds
                rows.append({"mode": mode, "models": len(ids), "seconds": seconds, "rate": rate})
                print(
                    f"  {mode}: {len(ids):,} models in {seconds:.1f} s, {rate:,.0f}/s", flush=True
                )

    print()
    print(table(
        ["mode", "models", "seconds", "models/s", "100,000 take"],
        [[r["mode"], f"{r['models']:,}", f"{r['seconds']:.1f}", f"{r['rate']:,.0f}",
          f"{100_000 / r['rate']:.0f} s"] for r in rows],
    ))  # fmt: skip
    for r in rows:
        verdict = "MET" if 100_000 / r["rate"] < 60 else "MISSED"
        print(
            f"{r['mode']}: 100,000 models in {100_000 / r['rate']:.0f} s (target < 60 s): {verdict}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
