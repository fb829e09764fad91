"""Benchmark the puller against plain boto3, and a cold pull + load against download + load.

    .venv/bin/python bench/puller.py                   # about a minute on 2 cores
    .venv/bin/python bench/puller.py --size-mb 200 --reps 5 --json results.json

One run starts moto's S3 server (`moto_server`, its own process, loopback) and a puller
(`python -m mesh puller`, its own process, on a unix socket, default settings but for the
cache directory and the storage configuration) and measures:

1. Throughput for one object of --size-mb (random bytes, uploaded in one PUT, so its ETag is
   its MD5 and the puller verifies it): the puller's Pull, cold every time (each repetition
   names another storage key for the same bucket, so it is another artifact), against boto3's
   `download_file` (its default TransferConfig: 8 MiB parts, 10 threads) from the same server
   into a file on the same disk. A second puller with --no-verify-checksums shows what the MD5
   check costs.
2. Cold pull + load, for an ONNX MLP and an XGBoost booster made by mesh.examples (the small
   models of the tests and two larger ones): Pull over gRPC then load the returned path in
   this process (onnxruntime.InferenceSession, xgboost.Booster), against boto3 `download_file`
   of the same object plus the same load. Median of --reps; each repetition reads its own copy
   of the model (another object key), so every pull is cold, on a storage key whose client a
   first pull made (as in a running pod: the first pull of a key builds its client, ~8 ms).
3. A warm Pull (a cache hit): the round trip the pod pays for a model already on disk.

Everything shares the machine's cores: moto's server, the puller and this client. Read the
ratios, measured in the same run, rather than the absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mesh.lifecycle import free_port  # noqa: E402
from mesh.storageref import StorageRef  # noqa: E402

BUCKET = "bench"
KEYS_PER_PULLER = 64


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@contextmanager
def process(
    cmd: list[str], ready: Callable[[], bool], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, env=child_env())
    try:
        deadline = time.monotonic() + 60
        while not ready():
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited: {log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[0]} did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def port_open(port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            return False

    return check


def s3_client(url: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        region_name="us-east-1",
    )


def storage_config(path: Path, url: str) -> None:
    entry = {
        "type": "s3",
        "access_key_id": "bench",
        "secret_access_key": "bench",
        "endpoint_url": url,
        "region": "us-east-1",
        "bucket": BUCKET,
    }
    path.write_text(json.dumps({f"k{i}": entry for i in range(KEYS_PER_PULLER)}))


@dataclass
class Results:
    machine: dict[str, str] = field(default_factory=dict)
    throughput: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)
    warm: dict[str, float] = field(default_factory=dict)


class Keys:
    """A fresh storage key per cold pull: another artifact for the same object."""

    def __init__(self) -> None:
        self._n = 0

    def next(self) -> str:
        self._n += 1
        if self._n >= KEYS_PER_PULLER:
            raise RuntimeError("out of storage keys: raise KEYS_PER_PULLER")
        return f"k{self._n}"


async def pull_cold(client: Any, keys: Keys, path: str) -> tuple[float, Path]:
    key = keys.next()
    started = time.perf_counter()
    result = await client.fetch(f"bench-{key}", StorageRef(key, path))
    elapsed = time.perf_counter() - started
    await client.release(f"bench-{key}")
    assert not result.cache_hit
    return elapsed, result.local_path


def boto_download(s3: Any, key: str, dest: Path) -> float:
    started = time.perf_counter()
    s3.download_file(BUCKET, key, str(dest))
    elapsed = time.perf_counter() - started
    return elapsed


def load_onnx(path: Path) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def load_xgb(path: Path) -> None:
    import xgboost as xgb

    xgb.Booster(model_file=str(path))


def build_models(directory: Path) -> list[tuple[str, str, Path, Callable[[Path], None]]]:
    from mesh import examples

    return [
        ("mlp", "ONNX MLP 64-256-256-10", examples.onnx_mlp(directory / "mlp"), load_onnx),
        (
            "xgb",
            "XGBoost, 5 trees",
            examples.xgboost_booster(directory / "xgb", n_trees=5),
            load_xgb,
        ),
        (
            "mlp-large",
            "ONNX MLP 64-2048-2048-10",
            examples.onnx_mlp(directory / "mlp-large", sizes=(64, 2048, 2048, 10)),
            load_onnx,
        ),
        (
            "xgb-large",
            "XGBoost, 1000 trees",
            examples.xgboost_booster(directory / "xgb-large", n_trees=1000),
            load_xgb,
        ),
    ]


async def run(args: argparse.Namespace, results: Results, work: Path) -> None:
    from mesh.puller.client import PullerClient

    moto_port = free_port()
    moto_url = f"http://127.0.0.1:{moto_port}"
    moto_bin = Path(sys.executable).parent / "moto_server"
    moto_cmd = [str(moto_bin)] if moto_bin.exists() else [sys.executable, "-m", "moto.server"]
    config = work / "storage.json"
    storage_config(config, moto_url)
    with process(
        [*moto_cmd, "-H", "127.0.0.1", "-p", str(moto_port)],
        port_open(moto_port),
        work / "moto.log",
    ):
        s3 = s3_client(moto_url)
        s3.create_bucket(Bucket=BUCKET)
        size = args.size_mb * 1_000_000
        print(f"uploading {args.size_mb} MB and the models to moto ...", flush=True)
        s3.put_object(Bucket=BUCKET, Key="big.bin", Body=os.urandom(size))
        s3.put_object(Bucket=BUCKET, Key="warmup.bin", Body=os.urandom(100_000))
        models = build_models(work / "models")
        for key, _, path, _ in models:
            body = path.read_bytes()
            for rep in range(args.reps):  # a copy per repetition: each pull is a cold one
                s3.put_object(Bucket=BUCKET, Key=f"models/{key}/{rep}/{path.name}", Body=body)

        def puller_cmd(name: str, *extra: str) -> tuple[list[str], Path]:
            sock = work / f"{name}.sock"
            cmd = [
                sys.executable, "-m", "mesh", "puller", "--listen", f"unix:{sock}",
                "--cache-dir", str(work / f"cache-{name}"), "--cache-bytes", "4Gi",
                "--storage-config", str(config), "--no-metrics", "--log-level", "WARNING", *extra,
            ]  # fmt: skip
            return cmd, sock

        # 1. Throughput.
        dest = work / "boto.bin"
        boto = []
        for _ in range(args.reps):
            dest.unlink(missing_ok=True)
            boto.append(await asyncio.to_thread(boto_download, s3, "big.bin", dest))
        dest.unlink(missing_ok=True)
        rows = [("boto3 download_file (8 MiB parts, 10 threads)", boto)]
        for name, extra, label in (
            ("verify", (), "puller Pull (16 MiB ranges, 16 in flight, MD5 checked)"),
            ("noverify", ("--no-verify-checksums",), "puller Pull, --no-verify-checksums"),
        ):
            cmd, sock = puller_cmd(name, *extra)
            with process(cmd, sock.exists, work / f"puller-{name}.log"):
                async with PullerClient(f"unix:{sock}", timeout=600) as client:
                    keys = Keys()
                    times = []
                    for _ in range(args.reps):
                        elapsed, local = await pull_cold(client, keys, "big.bin")
                        assert local.stat().st_size == size
                        times.append(elapsed)
                    rows.append((label, times))
        base = statistics.median(boto)
        for label, times in rows:
            median = statistics.median(times)
            results.throughput.append(
                {
                    "client": label,
                    "reps": len(times),
                    "median_s": median,
                    "min_s": min(times),
                    "mb_per_s": size / median / 1e6,
                    "time_vs_boto3": median / base,
                }
            )

        # 2. Cold pull + load, and 3. a warm pull.
        cmd, sock = puller_cmd("models")
        with process(cmd, sock.exists, work / "puller-models.log"):
            async with PullerClient(f"unix:{sock}", timeout=600) as client:
                # The storage key's client is made by a first pull, as in a running pod.
                await client.pull("warm", StorageRef("k0", "warmup.bin"))
                for key, label, path, load in models:
                    load(path)  # the framework imported and warmed before timing
                    raw_dl, raw_load, pulled = [], [], []
                    for rep in range(args.reps):
                        object_key = f"models/{key}/{rep}/{path.name}"
                        target = work / f"raw-{key}-{rep}{path.suffix}"
                        raw_dl.append(
                            await asyncio.to_thread(boto_download, s3, object_key, target)
                        )
                        started = time.perf_counter()
                        load(target)
                        raw_load.append(time.perf_counter() - started)
                        target.unlink()
                        started = time.perf_counter()
                        result = await client.fetch(f"{key}-{rep}", StorageRef("k0", object_key))
                        load(result.local_path)
                        pulled.append(time.perf_counter() - started)
                        assert not result.cache_hit
                    raw = statistics.median(raw_dl) + statistics.median(raw_load)
                    results.models.append(
                        {
                            "model": key,
                            "label": label,
                            "bytes": path.stat().st_size,
                            "reps": args.reps,
                            "raw_download_ms": statistics.median(raw_dl) * 1e3,
                            "raw_load_ms": statistics.median(raw_load) * 1e3,
                            "raw_sum_ms": raw * 1e3,
                            "pull_load_ms": statistics.median(pulled) * 1e3,
                            "ratio": statistics.median(pulled) / raw,
                        }
                    )
                warm = []
                for _ in range(200):
                    started = time.perf_counter()
                    await client.fetch("warm", StorageRef("k0", "warmup.bin"))
                    warm.append(time.perf_counter() - started)
                results.warm = {
                    "p50_ms": statistics.median(warm) * 1e3,
                    "p99_ms": sorted(warm)[int(len(warm) * 0.99) - 1] * 1e3,
                }


def report(results: Results, args: argparse.Namespace) -> str:
    m = results.machine
    lines = [
        f"machine: {m['cpus']} CPUs, Python {m['python']}, obstore {m['obstore']}, "
        f"boto3 {m['boto3']}, moto {m['moto']}",
        f"run: {args.reps} repetitions, medians; moto_server, the puller and this client share "
        "the machine",
        "",
        f"1. Throughput, one {args.size_mb} MB object from moto S3 (cold pulls)",
        "",
        "| client | reps | median s | min s | MB/s | time / boto3 |",
        "|--------|-----:|---------:|------:|-----:|-------------:|",
    ]
    for row in results.throughput:
        lines.append(
            f"| {row['client']} | {row['reps']} | {row['median_s']:.2f} | {row['min_s']:.2f} | "
            f"{row['mb_per_s']:.0f} | {row['time_vs_boto3']:.2f}x |"
        )
    lines += [
        "",
        "2. Cold pull + load vs. raw download (boto3) + load, in ms (medians)",
        "",
        "| model | bytes | raw download | raw load | raw sum | Pull + load | ratio |",
        "|-------|------:|-------------:|---------:|--------:|------------:|------:|",
    ]
    for row in results.models:
        lines.append(
            f"| {row['model']} ({row['label']}) | {row['bytes']:,} | "
            f"{row['raw_download_ms']:.1f} | "
            f"{row['raw_load_ms']:.1f} | {row['raw_sum_ms']:.1f} | {row['pull_load_ms']:.1f} | "
            f"{row['ratio']:.2f}x |"
        )
    lines += [
        "",
        f"3. Warm Pull (cache hit) over gRPC on a unix socket: p50 {results.warm['p50_ms']:.2f} ms,"
        f" p99 {results.warm['p99_ms']:.2f} ms (200 pulls)",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200, help="the large object (200 MB)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per cell (3)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    import boto3
    import moto
    import obstore

    results = Results(
        machine={
            "cpus": str(os.cpu_count()),
            "python": platform.python_version(),
            "obstore": obstore.__version__,
            "boto3": boto3.__version__,
            "moto": moto.__version__,
        }
    )
    work = Path(tempfile.mkdtemp(prefix="mesh-bench-puller-", dir="/tmp"))
    started = time.perf_counter()
    try:
        asyncio.run(run(args, results, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(report(results, args))
    print(f"\nwhole run: {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(asdict(results), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
