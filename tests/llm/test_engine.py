"""The transformers runtime and its batching engine, in process, against transformers itself."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mesh.errors import InvalidRequest
from mesh.llm.params import SamplingParams
from mesh.runtimes.base import Device, LoadRequest, ModelConfig
from mesh.runtimes.llm import GenerativeModel, TransformersRuntime
from tests.helpers import wait_until

PROMPTS = ["the quick brown", "hello world", "the mesh", "a router", "models that", "tokens"]
GREEDY = SamplingParams(max_tokens=10, temperature=0)


def _load(directory: Path, name: str, base: Any = None, **options: str) -> GenerativeModel:
    runtime = TransformersRuntime()
    runtime.warm_up()
    marker = "adapter_config.json" if base is not None else "config.json"
    request = LoadRequest(name, directory / marker, ModelConfig(), options, Device(), base=base)
    return runtime.load(request)


@pytest.fixture(scope="module")
def llama(llm_dir: Path) -> Iterator[GenerativeModel]:
    model = _load(llm_dir / "llama", "llama")
    yield model
    model.close()


def _reference(directory: Path, prompt: str, max_new_tokens: int = 10) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory)
    ids = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    return str(tokenizer.decode(out[0][ids["input_ids"].shape[1] :], skip_special_tokens=True))


async def _run(model: GenerativeModel, prompt: str, params: SamplingParams) -> tuple[str, Any]:
    stream = model.stream(model.encode(prompt), params)
    parts, last = [], None
    async for chunk in stream:
        parts.append(chunk.text)
        last = chunk
    return "".join(parts), last


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_greedy_batched_output_equals_transformers_generate(llm_dir: Path, name: str) -> None:
    model = _load(llm_dir / name, name)
    try:
        expected = [_reference(llm_dir / name, p) for p in PROMPTS]
        assert expected[0] == "fox jumps over the lazy dog"  # the model learned its sentences

        async def all_at_once() -> list[tuple[str, Any]]:
            # Three rounds of every prompt at once: rows join and leave the batch mid-way.
            return await asyncio.gather(*(_run(model, p, GREEDY) for p in PROMPTS * 3))

        results = asyncio.run(all_at_once())
        assert [text for text, _ in results] == expected * 3
        assert model.engine.max_batch > 1
    finally:
        model.close()


def test_finish_reasons_usage_and_stop(llama: GenerativeModel) -> None:
    text, last = asyncio.run(_run(llama, "the quick brown", GREEDY))
    assert (text, last.finish_reason) == ("fox jumps over the lazy dog", "stop")  # EOS
    assert last.stats.prompt_tokens == 3 and last.stats.completion_tokens == 7
    text, last = asyncio.run(_run(llama, "the quick brown", SamplingParams(3, 0.0)))
    assert (text, last.finish_reason) == ("fox jumps over", "length")
    assert last.stats.completion_tokens == 3
    stop = SamplingParams(max_tokens=10, temperature=0, stop=("lazy", "over the"))
    text, last = asyncio.run(_run(llama, "the quick brown", stop))
    assert (text, last.finish_reason) == ("fox jumps ", "stop")


def test_stop_sequence_text_is_never_streamed(llama: GenerativeModel) -> None:
    async def chunks() -> list[str]:
        params = SamplingParams(max_tokens=10, temperature=0, stop=("the lazy",))
        return [c.text async for c in llama.stream(llama.encode("the quick brown"), params)]

    parts = asyncio.run(chunks())
    assert "".join(parts) == "fox jumps over "
    assert all("the" not in p for p in parts)


def test_a_seed_makes_sampling_reproducible(llama: GenerativeModel) -> None:
    params = SamplingParams(max_tokens=12, temperature=2.0, seed=7, ignore_eos=True)

    async def three() -> list[tuple[str, Any]]:
        return await asyncio.gather(*(_run(llama, "hello", params) for _ in range(3)))

    texts = {t for t, _ in asyncio.run(three())}
    assert len(texts) == 1
    other = {
        asyncio.run(_run(llama, "hello", SamplingParams(12, 2.0, seed=s, ignore_eos=True)))[0]
        for s in range(1, 6)
    }
    assert len(other) > 1  # sampling does sample


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -0.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -3}, "top_k"),
        ({"stop": [1, 2]}, "stop"),
        ({"max_tokens": "many"}, "max_tokens"),
        ({"temperature": float("nan")}, "temperature"),
    ],
)
def test_bad_parameters_are_refused(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        SamplingParams.parse(raw)


def test_a_request_beyond_the_kv_budget_is_refused(llm_dir: Path) -> None:
    model = _load(llm_dir / "llama", "small", kv_cache_tokens="8")
    try:
        with pytest.raises(InvalidRequest, match="KV-cache budget"):
            model.check(model.encode("the quick brown"), SamplingParams(max_tokens=10))
        small = _load(llm_dir / "llama", "kv", kv_cache_tokens="64")
        big = _load(llm_dir / "llama", "kv2", kv_cache_tokens="6400")
        assert big.size_hint() > small.size_hint()  # the budget is charged
        small.close()
        big.close()
    finally:
        model.close()


def test_a_cancelled_stream_leaves_the_batch_within_a_token(llama: GenerativeModel) -> None:
    params = SamplingParams(max_tokens=120, temperature=1.0, ignore_eos=True)

    async def abandon() -> tuple[int, Any]:
        stream = llama.stream(llama.encode("hello"), params)
        async for _ in stream:
            break  # the client goes away after its first token
        seq = stream._seq
        with llama.engine._cond:  # no step runs while we read the count and cancel
            at_cancel = len(seq.generated)
            stream.cancel()
        return at_cancel, seq

    at_cancel, seq = asyncio.run(abandon())
    wait_until(lambda: llama.engine.busy() == 0, what="the abandoned sequence to leave")
    assert len(seq.generated) <= at_cancel + 1 < 120


def test_adapter_and_base_interleave_without_leaking(llm_dir: Path) -> None:
    base = _load(llm_dir / "llama", "llama")
    adapter = _load(llm_dir / "llama-lora", "llama-lora", base=base)
    try:
        assert 0 < adapter.size_hint() < base.size_hint()

        async def mixed() -> list[tuple[str, Any]]:
            calls = []
            for _ in range(4):
                calls += [_run(base, "the quick brown", GREEDY)]
                calls += [_run(adapter, "the quick brown", GREEDY)]
            return await asyncio.gather(*calls)

        texts = [t for t, _ in asyncio.run(mixed())]
        assert texts[0::2] == ["fox jumps over the lazy dog"] * 4
        assert texts[1::2] == ["fox sleeps under the old tree"] * 4
        adapter.close()
        # The adapter's layers are gone: the base answers as before, from the same model.
        assert asyncio.run(_run(base, "hello world", GREEDY))[0] == "this is a tiny language model"
    finally:
        base.close()
