"""The GPU tier on a real device: demotions past device memory, promotion against a reload from
disk, and memory that comes back after load/unload cycles; per device.

    .venv/bin/python bench/gpu.py --device cuda --json gpu.json       # every GPU NVML sees
    .venv/bin/python bench/gpu.py --device host --quick                # the CPU path (no GPU)

It drives the pod's own cache (mesh.pod.cache.ModelCache with its host tier and unload check,
the real runtimes and the device interface of mesh.pod.devices), in this process, per device:

1. Past device memory: loads copies of a TorchScript MLP until 1.5x the device tier's capacity
   has been asked for, and records each demotion and the device's measured memory after each
   load (it must stay within the device's total); then asks for every copy again, each a
   promotion from the host tier.
2. Promotion against reload: a ~1 GB (--big-mb) TorchScript model, demoted and promoted back,
   against a reload from its file with the file's pages dropped from the page cache
   (posix_fadvise DONTNEED), so the reload reads the disk. Ratio within the run.
3. Memory back: --cycles (200) load/infer/unload cycles per runtime (onnx, xgboost, torch); the
   device's used memory after the cycles against after the first, and the unload check's
   account of unreturned bytes per runtime.

On `--device host` the device tier is the host's memory (as on a CPU-only pod): models are
demoted as their files' bytes, and "device memory" is this process's RSS. That path runs in the
tests (tests/test_bench_gpu.py), so the script is not dead code where no GPU is lent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mesh import examples  # noqa: E402
from mesh.pod.cache import ModelCache, ModelSource  # noqa: E402
from mesh.pod.devices import (  # noqa: E402
    DeviceMemory,
    HostMemory,
    NvmlMemory,
    device_memory_for,
    used_meter,
)
from mesh.pod.hosttier import HostTier  # noqa: E402
from mesh.pod.memory import pin_malloc_thresholds, rss_bytes  # noqa: E402
from mesh.pod.recycle import UnloadAudit  # noqa: E402
from mesh.pod.repository import source_for  # noqa: E402
from mesh.runtimes.base import Device  # noqa: E402
from mesh.runtimes.registry import RuntimeRegistry  # noqa: E402

MB = 1_000_000
WIDTH = 2048


def torchscript(directory: Path, megabytes: float) -> Path:
    """A TorchScript MLP of about `megabytes` of FP32 weights, WIDTH wide."""
    import torch

    layer_bytes = (WIDTH * WIDTH + WIDTH) * 4
    layers = max(int(megabytes * MB / layer_bytes), 1)
    torch.manual_seed(0)
    module = torch.nn.Sequential(*[torch.nn.Linear(WIDTH, WIDTH) for _ in range(layers)]).eval()
    directory.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(module), str(directory / "model.pt"))
    spec = {"datatype": "FP32", "shape": [-1, WIDTH]}
    config = {"inputs": [{"name": "x", **spec}], "outputs": [{"name": "y", **spec}]}
    (directory / "mesh.json").write_text(json.dumps(config))
    return directory


def preflight(runtimes: list[str]) -> dict[str, str]:
    """What each framework brings for CUDA, before anything is built: the GPU path must not
    fall back to the CPU unseen (onnxruntime does, with a warning). SystemExit naming what is
    missing."""
    facts: dict[str, str] = {}
    missing: list[str] = []
    if "torch" in runtimes:
        import torch

        facts["torch"] = f"{torch.__version__} (CUDA {torch.version.cuda})"
        if not torch.cuda.is_available():
            missing.append("torch sees no CUDA device (a CPU build of torch?)")
    if "onnx" in runtimes:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
        facts["onnxruntime"] = f"{onnxruntime.__version__} ({', '.join(providers)})"
        if "CUDAExecutionProvider" not in providers:
            missing.append("onnxruntime has no CUDA provider (install onnxruntime-gpu)")
    if "xgboost" in runtimes:
        import xgboost

        cuda = bool(xgboost.build_info().get("USE_CUDA"))
        facts["xgboost"] = f"{xgboost.__version__} (CUDA {'yes' if cuda else 'no'})"
        if not cuda:
            missing.append("xgboost was built without CUDA")
    if missing:
        raise SystemExit("--device cuda: " + "; ".join(missing) + f" ({facts})")
    return facts


def devices(kind: str) -> list[Device]:
    if kind == "host":
        return [Device()]
    why = NvmlMemory.available(0)
    if why is not None:
        raise SystemExit(f"--device cuda: {why}")
    import pynvml

    return [Device("cuda", i) for i in range(pynvml.nvmlDeviceGetCount())]


class Rig:
    """One device's cache, host tier and unload check, on the real runtimes."""

    def __init__(
        self, device: Device, registry: RuntimeRegistry, capacity: int, host_tier: int
    ) -> None:
        self.device = device
        self.memory: DeviceMemory = device_memory_for(device) if device.is_cuda else HostMemory()
        on_device = self.memory.tier == "device"
        self.recycled: list[tuple[str, int]] = []
        self.audit = UnloadAudit(
            self.memory,
            bound=256 << 20,
            settle=2.0,
            on_recycle=lambda r, n: self.recycled.append((r, n)),
        )
        self.cache = ModelCache(
            capacity=capacity,
            runtimes=registry,
            device=device,
            meter=used_meter(self.memory) if on_device else rss_bytes,
            host_tier=HostTier(host_tier),
            audit=self.audit if on_device else None,
            on_device=on_device,
        )

    def used(self) -> int:
        reading = self.memory.read()
        return reading.used if reading is not None else -1

    def total(self) -> int:
        reading = self.memory.read()
        return reading.total if reading is not None else -1


def renamed(source: ModelSource, model_id: str) -> ModelSource:
    return ModelSource(model_id, source.format, source.file, source.config, source.options)


async def past_memory(rig: Rig, model: ModelSource, copy_bytes: int) -> dict[str, Any]:
    n = int(1.5 * rig.cache.capacity / copy_bytes) + 1
    rows = []
    for i in range(n):
        outcome = await rig.cache.load(renamed(model, f"copy{i}"))
        await rig.cache.demotions_read()
        rows.append(
            {
                "model": f"copy{i}",
                "seconds": outcome.seconds,
                "demoted": list(outcome.evicted),
                "device_used": rig.used(),
            }
        )
    promotions = []
    for i in range(n):
        outcome = await rig.cache.load(renamed(model, f"copy{i}"))
        if outcome.promoted:
            promotions.append(outcome.seconds)
    over = [r for r in rows if r["device_used"] > rig.total()]
    for i in range(n):
        await rig.cache.unload(f"copy{i}")
    return {
        "copies": n,
        "copy_bytes": copy_bytes,
        "capacity": rig.cache.capacity,
        "demotions": sum(len(r["demoted"]) for r in rows),
        "promotions": len(promotions),
        "promotion_s_median": sorted(promotions)[len(promotions) // 2] if promotions else None,
        "loads_over_device_total": len(over),
        "loads": rows,
    }


def drop_page_cache(path: Path) -> None:
    for file in path.parent.rglob("*"):
        if file.is_file():
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


async def promotion_vs_reload(rig: Rig, big: ModelSource, filler: ModelSource) -> dict[str, Any]:
    await rig.cache.load(big)
    fillers = 0
    while rig.cache.demoted_source(big.model_id) is None:
        if fillers == 8:
            raise RuntimeError("the fillers did not demote the big model")
        await rig.cache.load(renamed(filler, f"filler{fillers}"))
        await rig.cache.demotions_read()  # a file's bytes are read after the eviction
        fillers += 1
    for i in range(fillers):
        await rig.cache.unload(f"filler{i}")
    promoted = await rig.cache.load(big)
    assert promoted.promoted
    await rig.cache.unload(big.model_id)
    drop_page_cache(big.file)
    reloaded = await rig.cache.load(big)
    await rig.cache.unload(big.model_id)
    return {
        "file_bytes": big.disk_bytes(),
        "promotion_s": promoted.seconds,
        "reload_from_disk_s": reloaded.seconds,
        "ratio": reloaded.seconds / promoted.seconds if promoted.seconds else None,
    }


async def cycles(rig: Rig, sources: dict[str, ModelSource], n: int) -> list[dict[str, Any]]:
    import numpy as np

    rows = []
    for runtime, source in sources.items():
        first = None
        for i in range(n):
            await rig.cache.load(source)
            entry = rig.cache.acquire(source.model_id)
            assert entry is not None
            assert entry.model is not None
            signature = entry.model.signature
            spec = signature.inputs[0]
            shape = [1 if d < 0 else d for d in spec.shape]
            outputs = [o.name for o in signature.outputs]
            entry.model.predict({spec.name: np.ones(shape, np.float32)}, outputs)
            rig.cache.release(entry)
            await rig.cache.unload(source.model_id)
            if i == 0:
                first = rig.used()
        last = rig.used()
        rows.append(
            {
                "runtime": runtime,
                "cycles": n,
                "used_after_first": first,
                "used_after_last": last,
                "growth_bytes": last - (first or 0),
                "unreturned_bytes": rig.audit.unreturned.get(source.format, 0),
            }
        )
    return rows


def build(work: Path, args: argparse.Namespace, registry: RuntimeRegistry) -> dict[str, Any]:
    copy_mb = 8.0 if args.quick else 256.0
    big_mb = 40.0 if args.quick else args.big_mb
    built: dict[str, Any] = {}
    if "torch" in registry.names:
        built["copy"] = torchscript(work / "copy", copy_mb)
        built["big"] = torchscript(work / "big", big_mb)
        built["filler"] = torchscript(work / "filler", big_mb)
    built["cycle"] = {}
    if "onnx" in registry.names:
        built["cycle"]["onnx"] = examples.onnx_mlp(work / "c-onnx", sizes=(64, 1024, 1024, 10))
    if "xgboost" in registry.names:
        built["cycle"]["xgboost"] = examples.xgboost_booster(work / "c-xgb", n_trees=200)
    if "torch" in registry.names:
        built["cycle"]["torch"] = torchscript(work / "c-torch", 4.0)
    return built


async def run_device(
    device: Device, args: argparse.Namespace, registry: RuntimeRegistry, built: dict[str, Any]
) -> dict[str, Any]:
    memory = device_memory_for(device) if device.is_cuda else HostMemory()
    reading = memory.read()
    free = reading.free if reading is not None else 0
    capacity = args.capacity or (64 * MB if args.quick else int(free * 0.8))
    rig = Rig(device, registry, capacity, host_tier=args.host_tier or 4 * capacity)
    result: dict[str, Any] = {"device": str(device), "memory_source": memory.name}
    result["reading_at_start"] = {"total": rig.total(), "used": rig.used()}

    def source(model_id: str, path: Path) -> ModelSource:
        return source_for(model_id, path, registry)

    if "copy" in built:
        copy = source("copy", built["copy"])
        first = await rig.cache.load(copy)
        await rig.cache.unload("copy")
        result["past_memory"] = await past_memory(rig, copy, first.size)
        result["promotion_vs_reload"] = await promotion_vs_reload(
            rig, source("big", built["big"]), source("filler", built["filler"])
        )
    result["cycles"] = await cycles(
        rig, {r: source(f"cycle-{r}", p) for r, p in built["cycle"].items()}, args.cycles
    )
    result["recycled"] = rig.recycled
    await rig.cache.aclose()
    return result


def report(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        lines.append(f"## {r['device']} (memory from {r['memory_source']})")
        pm = r.get("past_memory")
        if pm:
            lines.append(
                f"- past device memory: {pm['copies']} copies of {pm['copy_bytes'] / MB:.0f} MB "
                f"on {pm['capacity'] / MB:.0f} MB: {pm['demotions']} demotions, "
                f"{pm['promotions']} promotions (median {pm['promotion_s_median']:.3f} s), "
                f"{pm['loads_over_device_total']} loads over the device's total"
            )
        pr = r.get("promotion_vs_reload")
        if pr:
            lines.append(
                f"- {pr['file_bytes'] / MB:.0f} MB model: promotion {pr['promotion_s']:.3f} s, "
                f"reload from disk {pr['reload_from_disk_s']:.3f} s ({pr['ratio']:.1f}x)"
            )
        for c in r["cycles"]:
            lines.append(
                f"- {c['runtime']}: {c['cycles']} cycles, used grew {c['growth_bytes'] / MB:.1f} MB"
                f" after the first; unreturned by the unload check {c['unreturned_bytes'] / MB:.1f}"
                " MB"
            )
        lines.append(f"- recycles: {r['recycled'] or 'none'}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "host"], default="cuda")
    parser.add_argument("--runtimes", default="onnx,xgboost,torch")
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--big-mb", type=float, default=1000.0)
    parser.add_argument("--capacity", type=int, help="device tier bytes (default 80%% of free)")
    parser.add_argument("--host-tier", type=int, help="host tier bytes (default 4x capacity)")
    parser.add_argument("--quick", action="store_true", help="small models (the CPU check)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    # The devices and the frameworks' CUDA first: nothing is warmed or built for a run that
    # cannot go.
    found = devices(args.device)
    registry = RuntimeRegistry.discover(args.runtimes.split(","))
    facts = preflight(registry.names) if args.device == "cuda" else {}
    for name in registry.names:
        registry.warm_up(name)
    pin_malloc_thresholds()  # as the pod does after its warm-up (mesh.pod.server)
    work = Path(tempfile.mkdtemp(prefix="mesh-bench-gpu-", dir="/tmp"))
    started = time.perf_counter()
    try:
        built = build(work, args, registry)
        results = [asyncio.run(run_device(d, args, registry, built)) for d in found]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for name, fact in facts.items():
        print(f"{name}: {fact}")
    print(report(results))
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
