"""Benchmark generative models: tokens/s and time to first token, and adapters against copies.

    .venv/bin/python bench/llm.py            # about 2 minutes on 2 cores
    .venv/bin/python bench/llm.py --quick    # fewer tokens and rounds
    .venv/bin/python bench/llm.py --json results.json

One run, one model made on the spot (mesh.llm.examples.tiny_llama at hidden 512, 4 layers:
about 10M parameters, 40 MB in FP32), greedy decoding of `--tokens` tokens per stream with EOS
ignored, so every target generates exactly the same number of tokens:

1. **transformers in process** (the baseline): `model.generate` on a batch of N left-padded
   prompts, N = 1, 4, 16 (a static batch: the best case for it, all prompts arrive together).
   TTFT is the wall time of the same batch with max_new_tokens=1.
2. **engine in process**: mesh's runtime (mesh.runtimes.llm) and its step-wise batching
   engine, N concurrent streams; TTFT is each stream's first chunk.
3. **through the router**: a local mesh (`mesh.up.local_mesh`: etcd, one pod with its puller,
   one router, as child processes), N concurrent ModelStreamInfer streams over gRPC from this
   process; TTFT is each stream's first response.

Reported per N: tokens/s of the whole (N x tokens / wall), mean TTFT, and ratios to the
baseline. Rounds alternate the targets' order. Targets: the router's tokens/s >= 0.8x the
in-process engine's at every N (the hop's cost), and the engine's tokens/s at N=16 above
transformers' static batch (continuous batching should not lose to it).

4. **N adapters on one base against N full copies**: in this process, the base is loaded, then
   `--adapters` LoRA adapters (rank 8 on every projection; one trained adapter saved under N
   names), then N full copies of the base; each load's wall time, and the process's RSS growth
   over the load and one generated token (safetensors maps weights lazily: the token touches
   them, as serving would).

The machine is shared with other work: figures move between runs; compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STREAMS = (1, 4, 16)
PROMPT = "the quick brown"


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build(storage: Path, adapters: int) -> None:
    from mesh.llm import examples

    examples.tiny_llama(storage / "llama", steps=20, hidden=512, layers=4)
    examples.lora_adapter(storage / "lora-0", storage / "llama", "llama", steps=5)
    for i in range(1, adapters):
        shutil.copytree(storage / "lora-0", storage / f"lora-{i}")


# -- 1. transformers' generate -------------------------------------------------------------------


def bench_generate(model_dir: Path, n: int, tokens: int) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    batch = tokenizer([PROMPT] * n, return_tensors="pt", padding=True)
    common = {"do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    with torch.inference_mode():
        model.generate(**batch, max_new_tokens=2, min_new_tokens=2, **common)  # warm
        started = time.perf_counter()
        model.generate(**batch, max_new_tokens=1, **common)
        ttft = time.perf_counter() - started
        started = time.perf_counter()
        out = model.generate(**batch, max_new_tokens=tokens, min_new_tokens=tokens, **common)
        wall = time.perf_counter() - started
    produced = (out.shape[1] - batch["input_ids"].shape[1]) * n
    return {"tokens_per_s": produced / wall, "ttft_ms": ttft * 1000, "wall_s": wall}


# -- 2. the engine in process ------------------------------------------------------------------


def load_engine(model_dir: Path) -> Any:
    from mesh.runtimes.base import Device, LoadRequest, ModelConfig
    from mesh.runtimes.llm import TransformersRuntime

    runtime = TransformersRuntime()
    runtime.warm_up()
    return runtime.load(
        LoadRequest("llama", model_dir / "config.json", ModelConfig(), {}, Device())
    )


def bench_engine(model: Any, n: int, tokens: int) -> dict[str, float]:
    from mesh.llm.params import SamplingParams

    params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)

    async def one(started: float) -> tuple[float, int]:
        first, count = 0.0, 0
        async for chunk in model.stream(model.encode(PROMPT), params):
            if not first:
                first = time.perf_counter() - started
            count += len(chunk.token_ids)
        return first, count

    async def run() -> dict[str, float]:
        await one(time.perf_counter())  # warm
        started = time.perf_counter()
        results = await asyncio.gather(*(one(started) for _ in range(n)))
        wall = time.perf_counter() - started
        produced = sum(c for _, c in results)
        ttft = statistics.mean(f for f, _ in results)
        return {"tokens_per_s": produced / wall, "ttft_ms": ttft * 1000, "wall_s": wall}

    return asyncio.run(run())


# -- 3. through the router ---------------------------------------------------------------------


def stream_request(tokens: int) -> bytes:
    from mesh.gen import grpc_predict_v2_pb2 as pb

    request = pb.ModelInferRequest(model_name="llama")
    request.inputs.add(
        name="text_input", datatype="BYTES", shape=[1]
    ).contents.bytes_contents.append(PROMPT.encode())
    request.inputs.add(name="stream", datatype="BOOL", shape=[1]).contents.bool_contents.append(
        True
    )
    sampling = {"max_tokens": tokens, "temperature": 0, "ignore_eos": True}
    request.inputs.add(
        name="sampling_parameters", datatype="BYTES", shape=[1]
    ).contents.bytes_contents.append(json.dumps(sampling).encode())
    return request.SerializeToString()


def bench_router(address: str, n: int, tokens: int) -> dict[str, float]:
    from grpc import aio

    from mesh.gen import grpc_predict_v2_pb2 as pb

    data = stream_request(tokens)

    async def run() -> dict[str, float]:
        async with aio.insecure_channel(address) as channel:
            method = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")

            async def one(started: float) -> tuple[float, int]:
                first, count = 0.0, 0
                call = method(iter((data,)), timeout=600)
                async for message in call:
                    response = pb.ModelStreamInferResponse.FromString(message)
                    if response.error_message:
                        raise RuntimeError(response.error_message)
                    if not first:
                        first = time.perf_counter() - started
                    params = response.infer_response.parameters
                    if "completion_tokens" in params:
                        count = int(params["completion_tokens"].int64_param)
                return first, count

            await one(time.perf_counter())  # warm: the miss and the load
            started = time.perf_counter()
            results = await asyncio.gather(*(one(started) for _ in range(n)))
            wall = time.perf_counter() - started
        produced = sum(c for _, c in results)
        return {
            "tokens_per_s": produced / wall,
            "ttft_ms": statistics.mean(f for f, _ in results) * 1000,
            "wall_s": wall,
        }

    return asyncio.run(run())


@contextlib.contextmanager
def running_mesh(storage: Path, log: Path) -> Any:
    from mesh.lifecycle import free_port
    from mesh.up import UpSettings, local_mesh

    # rest_port 0: a free one.
    ns = UpSettings(storage=storage, pods=1, capacity="2Gi", port=free_port(), rest_port=0)
    with open(log, "ab") as out, contextlib.redirect_stdout(sys.stderr):
        saved = os.dup(2)
        os.dup2(out.fileno(), 2)
        try:
            with local_mesh(ns) as info:
                os.dup2(saved, 2)
                yield info
                os.dup2(out.fileno(), 2)
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def register(address: str) -> None:
    import grpc

    from mesh.gen import management_pb2 as mpb
    from mesh.gen import management_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = management_pb2_grpc.ManagementStub(channel)
        stub.RegisterModel(
            mpb.RegisterModelRequest(model_id="llama", format="transformers", storage_path="llama")
        )


# -- 4. adapters against copies ----------------------------------------------------------------


def bench_adapters(storage: Path, n: int) -> dict[str, Any]:
    import gc

    from mesh.runtimes.base import Device, LoadRequest, ModelConfig
    from mesh.runtimes.llm import TransformersRuntime

    runtime = TransformersRuntime()
    runtime.warm_up()

    from mesh.llm.params import SamplingParams

    one = SamplingParams(max_tokens=1, temperature=0)

    def load(name: str, marker: Path, base: Any = None) -> tuple[Any, float, int]:
        gc.collect()
        before, started = rss(), time.perf_counter()
        model = runtime.load(LoadRequest(name, marker, ModelConfig(), {}, Device(), base=base))
        seconds = time.perf_counter() - started
        # safetensors maps weights lazily: one token touches them all, as serving would.
        model.complete(model.encode(PROMPT), one)
        return model, seconds, rss() - before

    base, base_s, base_bytes = load("llama", storage / "llama" / "config.json")
    adapters = [
        load(f"lora-{i}", storage / f"lora-{i}" / "adapter_config.json", base) for i in range(n)
    ]
    copies = [load(f"copy-{i}", storage / "llama" / "config.json") for i in range(n)]
    result = {
        "n": n,
        "base_load_s": base_s,
        "base_rss_bytes": base_bytes,
        "adapter_load_s_median": statistics.median(s for _, s, _ in adapters),
        "adapter_rss_bytes_median": statistics.median(b for _, _, b in adapters),
        "adapter_charged_bytes": adapters[0][0].size_hint(),
        "copy_load_s_median": statistics.median(s for _, s, _ in copies),
        "copy_rss_bytes_median": statistics.median(b for _, _, b in copies),
        "copy_weights_bytes": base.size_hint() - base._kv_bytes,
        "adapters_total_rss_bytes": sum(b for _, _, b in adapters),
        "copies_total_rss_bytes": sum(b for _, _, b in copies),
    }
    for model, _, _ in [*adapters, *copies]:
        model.close()
    base.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.tokens, args.rounds = 32, 1
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other work)",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokens_per_stream": args.tokens,
        "rows": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-llm-") as tmp:
        storage = Path(tmp) / "storage"
        started = time.perf_counter()
        build(storage, args.adapters)
        print(f"models built in {time.perf_counter() - started:.1f}s", file=sys.stderr)
        engine = load_engine(storage / "llama")
        log = Path(tmp) / "mesh.log"
        with running_mesh(storage, log) as info:
            address = info.router.address
            register(address)
            cells: dict[tuple[str, int], list[dict[str, float]]] = {}
            targets = ["generate", "engine", "router"]
            for r in range(args.rounds):
                for n in STREAMS:
                    order = targets if r % 2 == 0 else targets[::-1]
                    for target in order:
                        if target == "generate":
                            cell = bench_generate(storage / "llama", n, args.tokens)
                        elif target == "engine":
                            cell = bench_engine(engine, n, args.tokens)
                        else:
                            cell = bench_router(address, n, args.tokens)
                        cells.setdefault((target, n), []).append(cell)
                        print(f"round {r} n={n} {target}: {cell}", file=sys.stderr)
        engine.close()
        for n in STREAMS:
            row: dict[str, Any] = {"streams": n}
            for target in targets:
                runs = cells[(target, n)]
                row[target] = {
                    "tokens_per_s": statistics.median(c["tokens_per_s"] for c in runs),
                    "ttft_ms": statistics.median(c["ttft_ms"] for c in runs),
                }
            base = row["generate"]["tokens_per_s"]
            row["router_vs_generate"] = row["router"]["tokens_per_s"] / base
            row["engine_vs_generate"] = row["engine"]["tokens_per_s"] / base
            row["router_vs_engine"] = row["router"]["tokens_per_s"] / row["engine"]["tokens_per_s"]
            report["rows"].append(row)
        report["adapters"] = bench_adapters(storage, args.adapters)
    report["targets"] = {
        "router >= 0.8x engine at every N": all(
            r["router_vs_engine"] >= 0.8 for r in report["rows"]
        ),
        "engine > generate at N=16": report["rows"][-1]["engine_vs_generate"] > 1.0,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
