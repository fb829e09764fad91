"""How long the mesh takes to notice faults: the timings the fault tests no longer assert.

    python bench/faults.py            # 3 rounds
    python bench/faults.py --rounds 5

1. **A killed pod**: a pod process (lease TTL `--ttl`, default 2 s) registers in a fresh etcd;
   it is SIGKILLed (no drain, no revoke) and the time until a watch-fed mirror no longer lists
   it is measured. Reported against the configured TTL (the baseline of the same run): etcd
   expires a lease between TTL and TTL + its expiry tick, so ~1.0-1.5x is the expected range.
2. **etcd gone**: with a router whose mirror is synced and etcd terminated, the time a request for
   a model that is not loaded takes to fail (UNAVAILABLE), against the same router's hit
   latency measured just before (a model loaded before etcd went). Fail-fast means a small
   multiple of a hit, far under the client's deadline (20 s here).

Other work may share the machine; the figures are noisy and say so by their spread.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from mesh import examples
from mesh.cluster.codec import Keys
from mesh.cluster.etcd import EtcdConfig, EtcdStore
from mesh.cluster.mirror import Mirror
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import grpc_predict_v2_pb2_grpc as pb_grpc
from mesh.gen import management_pb2 as mpb
from mesh.gen import management_pb2_grpc as mpb_grpc
from mesh.up import free_port, wait_port

MESH = [sys.executable, "-m", "mesh"]


def start_etcd(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    etcd = shutil.which("etcd")
    if etcd is None:
        raise SystemExit("no etcd on PATH (Debian: apt-get install etcd-server)")
    client, peer = free_port(), free_port()
    url = f"http://127.0.0.1:{client}"
    proc = subprocess.Popen(
        [etcd, "--data-dir", str(data), "--listen-client-urls", url,
         "--advertise-client-urls", url, "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"default=http://127.0.0.1:{peer}", "--log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_port(client, proc, "etcd")
    return proc, url


def start_pod(
    url: str, prefix: str, pod_id: str, ttl: int, models: Path
) -> subprocess.Popen[bytes]:
    port = free_port()
    proc = subprocess.Popen(
        [*MESH, "pod", "--etcd", url, "--etcd-prefix", prefix, "--pod-id", pod_id,
         "--host", "127.0.0.1", "--port", str(port), "--no-metrics", "--capacity", "1Gi",
         "--lease-ttl", str(ttl), "--storage-dir", str(models), "--runtimes", "onnx",
         "--handoff-timeout", "0"],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_port(port, proc, pod_id)
    return proc


async def killed_pod(url: str, ttl: int, rounds: int, models: Path) -> list[float]:
    seconds = []
    store = EtcdStore(EtcdConfig.parse(url))
    try:
        for i in range(rounds):
            prefix = f"/bench-kill-{i}/"
            mirror = Mirror(store, Keys(prefix))
            await mirror.start()
            proc = start_pod(url, prefix, "victim", ttl, models)
            try:
                await mirror.wait_for(lambda m: "victim" in m.instances, timeout=30)
                proc.send_signal(signal.SIGKILL)
                killed = time.monotonic()
                await mirror.wait_for(lambda m: "victim" not in m.instances, timeout=ttl * 10)
                seconds.append(time.monotonic() - killed)
            finally:
                proc.kill()
                proc.wait(10)
                await mirror.aclose()
    finally:
        await store.aclose()
    return seconds


def etcd_gone(
    etcd: subprocess.Popen[bytes], url: str, models: Path, rounds: int
) -> dict[str, list[float]]:
    pod = start_pod(url, "/bench-gone/", "pod-0", 10, models)
    port = free_port()
    router = subprocess.Popen(
        [*MESH, "router", "--etcd", url, "--etcd-prefix", "/bench-gone/", "--host", "127.0.0.1",
         "--port", str(port), "--metrics-port", str(free_port())],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_port(port, router, "router")
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        manage = mpb_grpc.ManagementStub(channel)
        infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        for model in ("hot", "cold"):
            manage.RegisterModel(
                mpb.RegisterModelRequest(model_id=model, format="onnx", storage_path="mlp")
            )
        request = pb.ModelInferRequest(model_name="hot")
        tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
        request.raw_input_contents.append(np.ones((1, 64), np.float32).tobytes())
        infer(request, timeout=60)  # loaded
        hits = []
        for _ in range(50):
            t0 = time.perf_counter()
            infer(request, timeout=20)
            hits.append(time.perf_counter() - t0)
        del tensor
        etcd.terminate()  # etcd gone, as the fault test has it
        etcd.wait(10)
        cold = pb.ModelInferRequest()
        cold.CopyFrom(request)
        cold.model_name = "cold"
        fails = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            try:
                infer(cold, timeout=20)
                fails.append((time.perf_counter() - t0, "OK"))
            except grpc.RpcError as exc:
                fails.append((time.perf_counter() - t0, exc.code().name))
        return {
            "hit": hits,
            "fail": [s for s, _ in fails],
            "codes": sorted({c for _, c in fails}),  # type: ignore[dict-item]
        }
    finally:
        router.kill()
        pod.kill()
        router.wait(10)
        pod.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description="fault detection times")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ttl", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        models = Path(tmp) / "models"
        examples.onnx_mlp(models / "mlp")
        etcd, url = start_etcd(Path(tmp) / "etcd")
        try:
            kill = asyncio.run(killed_pod(url, args.ttl, args.rounds, models))
            gone = etcd_gone(etcd, url, models, args.rounds)
        finally:
            etcd.kill()
            etcd.wait(10)
    median = statistics.median
    print(f"1. killed pod, lease TTL {args.ttl} s, {len(kill)} rounds")
    print(f"   gone from the mirror after: {', '.join(f'{s:.2f}' for s in kill)} s")
    print(f"   median {median(kill):.2f} s = {median(kill) / args.ttl:.2f}x the TTL")
    hit, fail = gone["hit"], gone["fail"]
    print(f"2. etcd terminated, {len(fail)} cold requests, deadline 20 s")
    print(f"   codes: {gone['codes']}")
    print(f"   hit p50 {median(hit) * 1e3:.2f} ms; cold fails after p50 {median(fail):.3f} s, "
          f"max {max(fail):.3f} s = {median(fail) / median(hit):.2f}x a hit, "
          f"{max(fail) / 20:.1%} of the deadline")  # fmt: skip


if __name__ == "__main__":
    main()
