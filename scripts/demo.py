"""Start a pod with example models, send it v2 requests with tritonclient, show what it holds.

    make demo            # or: .venv/bin/python scripts/demo.py [--port 8085] [--once]

The models are made on the spot (an ONNX MLP, an XGBoost booster, a TorchScript and a
torch.export MLP) in ./demo-models. The pod keeps running until Ctrl-C, unless --once.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as triton

from mesh import examples
from mesh.gen import runtime_pb2 as rpb
from mesh.gen import runtime_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent


def build_models(root: Path) -> None:
    makers = {
        "mlp": lambda d: examples.onnx_mlp(d),
        "fraud-xgb": lambda d: examples.xgboost_booster(d, n_trees=50),
        "scripted": lambda d: examples.torchscript_mlp(d),
        "exported": lambda d: examples.torch_export_mlp(d),
    }
    for name, make in makers.items():
        if not (root / name).is_dir():
            make(root / name)


def wait_ready(client: triton.InferenceServerClient, pod: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if pod.poll() is not None:
            sys.exit(f"the pod exited with status {pod.returncode}")
        try:
            if client.is_server_ready():
                return
        except Exception:
            pass
        time.sleep(0.2)
    sys.exit("the pod did not become ready within 60s")


def query(client: triton.InferenceServerClient) -> None:
    rng = np.random.default_rng(0)
    calls = [
        ("mlp", "input", rng.standard_normal((2, 64)), "output"),
        ("fraud-xgb", "input__0", rng.standard_normal((3, 64)), "output__0"),
        ("scripted", "x", rng.standard_normal((2, 16)), "y"),
        ("exported", "input", rng.standard_normal((2, 16)), "output__0"),
    ]
    for model, name, data, output in calls:
        x = data.astype(np.float32)
        tensor = triton.InferInput(name, list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        started = time.perf_counter()
        result = client.infer(model, [tensor]).as_numpy(output)
        ms = (time.perf_counter() - started) * 1000
        print(
            f"  {model:<10} {name}{list(x.shape)} -> {output}{list(result.shape)} "
            f"in {ms:6.1f} ms (first call loads): {np.round(result.reshape(-1)[:4], 3)}"
        )


def show_status(address: str) -> None:
    stub = runtime_pb2_grpc.RuntimeStub(grpc.insecure_channel(address))
    status = stub.RuntimeStatus(rpb.RuntimeStatusRequest())
    print(
        f"\npod {address}: capacity {status.capacity_bytes / 2**20:.0f} MiB, used "
        f"{status.used_bytes / 2**20:.2f} MiB, device {status.device}, runtimes "
        f"{list(status.runtimes)}"
    )
    for m in status.models:
        print(
            f"  {m.model_id:<10} {m.format:<8} {m.size_bytes / 2**20:8.2f} MiB "
            f"(measured {m.measured_bytes / 2**20:.2f}, estimated {m.estimated_bytes / 2**20:.2f})"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8085)
    parser.add_argument("--metrics-port", type=int, default=2112)
    parser.add_argument("--models", type=Path, default=ROOT / "demo-models")
    parser.add_argument("--once", action="store_true", help="stop the pod after the demo")
    args = parser.parse_args()

    print(f"building example models in {args.models} ...")
    build_models(args.models)
    address = f"127.0.0.1:{args.port}"
    mesh = Path(sys.executable).parent / "mesh"
    pod = subprocess.Popen([
        str(mesh), "pod", "--models", str(args.models), "--host", "127.0.0.1",
        "--port", str(args.port), "--metrics-port", str(args.metrics_port), "--capacity", "1Gi",
    ])  # fmt: skip
    try:
        client = triton.InferenceServerClient(address)
        wait_ready(client, pod)
        print(f"\nv2 requests to {address} with tritonclient:")
        query(client)
        show_status(address)
        if args.once:
            return 0
        print(
            f"\nThe pod is serving on {address} (metrics: http://127.0.0.1:{args.metrics_port}"
            "/metrics). Press Ctrl-C to stop it."
        )
        signal.signal(signal.SIGINT, lambda *_: None)  # let the pod drain and exit on its own
        return pod.wait()
    finally:
        if pod.poll() is None:
            pod.send_signal(signal.SIGTERM)
            pod.wait(30)


if __name__ == "__main__":
    sys.exit(main())
