"""Start a local mesh with example models, query it through the router, show what each pod holds.

    make demo            # or: .venv/bin/python scripts/demo.py [--port 8033] [--once]

Builds an ONNX MLP, an XGBoost booster, a TorchScript and a torch.export MLP in ./demo-models,
starts `mesh up` (etcd, a router, two pods), registers the models, sends each a v2 request with
tritonclient through the router, and prints the answers and each pod's capacity, used bytes and
models. It keeps running until Ctrl-C, unless --once.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as triton

from mesh import examples
from mesh.gen import management_pb2 as mpb
from mesh.gen import management_pb2_grpc, runtime_pb2_grpc
from mesh.gen import runtime_pb2 as rpb
from mesh.up import UpSettings, local_mesh

ROOT = Path(__file__).resolve().parent.parent

MODELS = {
    # name: (format, maker, input name, input width, output name)
    "mlp": ("onnx", lambda d: examples.onnx_mlp(d), "input", 64, "output"),
    "fraud-xgb": ("xgboost", lambda d: examples.xgboost_booster(d, n_trees=50), "input__0", 64,
                  "output__0"),
    "scripted": ("torch", lambda d: examples.torchscript_mlp(d), "x", 16, "y"),
    "exported": ("torch", lambda d: examples.torch_export_mlp(d), "input", 16, "output__0"),
}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8033, help="the router's port")
    parser.add_argument("--models", type=Path, default=ROOT / "demo-models")
    parser.add_argument("--pods", type=int, default=2)
    parser.add_argument("--once", action="store_true", help="stop the mesh after the demo")
    args = parser.parse_args()

    print(f"building example models in {args.models} ...")
    for name, (_, make, *_rest) in MODELS.items():
        if not (args.models / name).is_dir():
            make(args.models / name)

    # The REST port: a free one (rest_port=0), beside whatever else this machine serves.
    up = UpSettings(storage=args.models, pods=args.pods, port=args.port, rest_port=0)
    with local_mesh(up) as mesh:
        router = mesh.router.address
        pods = [pod.name for pod in mesh.pods]
        print(f"\nmesh up: router {router}, etcd {mesh.etcd.url}, pods {pods}")
        management = management_pb2_grpc.ManagementStub(grpc.insecure_channel(router))
        for name, (fmt, *_rest) in MODELS.items():
            management.RegisterModel(
                mpb.RegisterModelRequest(model_id=name, format=fmt, storage_path=name)
            )
        print(f"registered {list(MODELS)}")

        print(f"\nv2 requests through the router {router} with tritonclient:")
        client = triton.InferenceServerClient(router)
        rng = np.random.default_rng(0)
        for name, (_, _, input_name, width, output) in MODELS.items():
            x = rng.standard_normal((2, width)).astype(np.float32)
            tensor = triton.InferInput(input_name, list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            for attempt in ("miss", "hit"):
                started = time.perf_counter()
                result = client.infer(name, [tensor]).as_numpy(output)
                ms = (time.perf_counter() - started) * 1000
                print(
                    f"  {name:<10} {attempt}: {input_name}{list(x.shape)} -> {output}"
                    f"{list(result.shape)} in {ms:7.1f} ms  {np.round(result.reshape(-1)[:3], 3)}"
                )
        rest = f"http://{mesh.router.rest}"
        with urllib.request.urlopen(f"{rest}/v2/health/ready", timeout=10) as response:
            print(f"\nv2 REST at {rest}: /v2/health/ready {response.status} {response.read()!r}")
        time.sleep(1)  # pods publish their state a fraction of a second after a change

        print("\npods:")
        for pod in mesh.pods:
            pod_id, address = pod.name, pod.address
            stub = runtime_pb2_grpc.RuntimeStub(grpc.insecure_channel(address))
            status = stub.RuntimeStatus(rpb.RuntimeStatusRequest())
            models = (
                ", ".join(f"{m.model_id} ({m.size_bytes / 2**20:.1f} MiB)" for m in status.models)
                or "none"
            )
            print(
                f"  {pod_id} {address}: capacity {status.capacity_bytes / 2**20:.0f} MiB, "
                f"used {status.used_bytes / 2**20:.1f} MiB, models: {models}"
            )
        if args.once:
            return 0
        print(
            f"\nThe mesh is serving on {router}. In another shell, from this directory:\n"
            f"  . .venv/bin/activate          # puts `mesh` on PATH (or run .venv/bin/mesh)\n"
            f"  mesh status --router {router}\n"
            f"The capacity page: http://{mesh.router.rest}/dashboard\n"
            "Press Ctrl-C to stop it."
        )
        try:
            while not mesh.exited():
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("\nstopping the mesh")
    return 0


if __name__ == "__main__":
    sys.exit(main())
