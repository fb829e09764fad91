"""Generative models in the host tier: demoted with their live torch objects, promoted by a move.

Real tiny models (tests/llm/conftest.py) in the pod's cache, on a CPU-only pod and on a
FakeDevice (the GPU path's rules, with the CPU as the device): a base's module is kept and comes
back as the same object, answering as before; the tier lets its least recently used go; a base's
adapters are demoted with it (first), an adapter's weights leave its base when it is demoted
alone, and an adapter's promotion needs its base.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mesh.errors import ModelNotReady
from mesh.llm.params import SamplingParams
from mesh.pod.cache import ModelCache, ModelSource
from mesh.pod.devices import FakeDevice, used_meter
from mesh.pod.hosttier import HostTier
from mesh.pod.repository import source_for
from mesh.runtimes.llm import TransformersRuntime
from mesh.runtimes.registry import RuntimeRegistry
from tests.fakes import FakeRuntime, fake_source

GREEDY = SamplingParams(max_tokens=8, temperature=0)
PROMPT = "the quick brown"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1.0  # every look is a later moment: a strict LRU order
        return self.now


@pytest.fixture(scope="module")
def registry() -> RuntimeRegistry:
    runtime = TransformersRuntime()
    runtime.warm_up()
    return RuntimeRegistry([runtime, FakeRuntime()])


def cache_for(registry: RuntimeRegistry, *, on_device: bool, host: int = 1 << 30) -> ModelCache:
    # On the fake device its reading is the measurement (the CPU is the device here, so it
    # reads nothing moving) and models demote themselves as on a GPU; on the CPU pod, sizes come
    # from the runtime's counts, the same each load.
    device = FakeDevice(total=1 << 30)
    meter: Callable[[], int | None] = used_meter(device) if on_device else lambda: None
    return ModelCache(
        capacity=1 << 30,
        runtimes=registry,
        meter=meter,
        clock=Clock(),
        host_tier=HostTier(host),
        on_device=on_device,
    )


def generate(cache: ModelCache, model_id: str) -> tuple[str, tuple[int, ...]]:
    entry = cache.acquire(model_id)
    assert entry is not None and entry.model is not None, f"{model_id} is not loaded"
    try:
        model: Any = entry.model
        chunk = model.complete(model.encode(PROMPT), GREEDY)
        return chunk.text, chunk.token_ids
    finally:
        cache.release(entry)


def module_of(cache: ModelCache, model_id: str) -> Any:
    entry = cache.acquire(model_id)
    assert entry is not None
    cache.release(entry)
    return entry.model.engine.model  # type: ignore[union-attr]


def weight_bytes(module: Any) -> int:
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


async def size_alone(cache: ModelCache, source: ModelSource) -> int:
    size = (await cache.load(source)).size
    await cache.unload(source.model_id)
    return size


@pytest.mark.parametrize("on_device", [False, True], ids=["cpu-pod", "fake-device"])
async def test_a_demoted_llm_keeps_its_module_and_answers_the_same_once_promoted(
    registry: RuntimeRegistry, llm_dir: Path, on_device: bool
) -> None:
    cache = cache_for(registry, on_device=on_device)
    llama = source_for("llama", llm_dir / "llama", registry)
    gpt2 = source_for("gpt2", llm_dir / "gpt2", registry)
    gpt2_size = await size_alone(cache, gpt2)
    first = await cache.load(llama)
    before = generate(cache, "llama")
    module = module_of(cache, "llama")
    cache.capacity = max(first.size, gpt2_size)  # room for one of them
    assert (await cache.load(gpt2)).evicted == ("llama",)
    (held,) = cache.view().demoted
    assert held.model_id == "llama" and held.moved  # the live objects, not files
    assert held.host_bytes == weight_bytes(module)  # the weights; the KV budget is not kept
    assert cache.view().host_used == held.host_bytes

    promoted = await cache.load(llama)
    assert promoted.promoted and promoted.evicted == ("gpt2",)
    assert module_of(cache, "llama") is module  # moved back, not loaded again
    assert generate(cache, "llama") == before
    assert [d.model_id for d in cache.view().demoted] == ["gpt2"]
    await cache.aclose()


async def test_the_host_tier_lets_the_least_recently_used_llm_go(
    registry: RuntimeRegistry, llm_dir: Path
) -> None:
    probe = cache_for(registry, on_device=False)
    one = source_for("one", llm_dir / "llama", registry)
    size = await size_alone(probe, one)
    await probe.load(one)
    weights = weight_bytes(module_of(probe, "one"))
    await probe.aclose()

    cache = cache_for(registry, on_device=False, host=weights + weights // 2)  # room for one copy
    cache.capacity = size  # and one model on the device
    for model_id in ("one", "two", "three"):  # the same weights under three ids
        await cache.load(source_for(model_id, llm_dir / "llama", registry))
    assert [d.model_id for d in cache.view().demoted] == ["two"]  # one let go for two
    assert not (await cache.load(one)).promoted  # a load from its files again
    assert [d.model_id for d in cache.view().demoted] == ["three"]
    assert generate(cache, "one")[0] == "fox jumps over the lazy dog"
    await cache.aclose()


async def test_adapters_are_demoted_with_their_base_and_need_it_to_come_back(
    registry: RuntimeRegistry, llm_dir: Path, tmp_path: Path
) -> None:
    from peft import PeftModel

    cache = cache_for(registry, on_device=False)
    base = source_for("llama", llm_dir / "llama", registry)
    lora = source_for("llama-lora", llm_dir / "llama-lora", registry)
    assert lora.base == "llama"
    gpt2 = source_for("gpt2", llm_dir / "gpt2", registry)
    gpt2_size = await size_alone(cache, gpt2)
    base_size = (await cache.load(base)).size
    base_weights = weight_bytes(module_of(cache, "llama"))
    lora_size = (await cache.load(lora)).size
    base_text, lora_text = generate(cache, "llama"), generate(cache, "llama-lora")
    assert base_text != lora_text
    named = module_of(cache, "llama").named_parameters()
    lora_weights = sum(p.numel() * p.element_size() for n, p in named if ".llama-lora." in n)

    # The base's group goes for room: its adapter is demoted first, then the base.
    cache.capacity = max(base_size + lora_size, gpt2_size)
    assert (await cache.load(gpt2)).evicted == ("llama",)
    held = {d.model_id: d for d in cache.view().demoted}
    assert set(held) == {"llama", "llama-lora"} and held["llama"].moved and held["llama-lora"].moved
    assert held["llama"].host_bytes == base_weights  # the adapter's weights left it first
    assert held["llama-lora"].host_bytes == lora_weights

    with pytest.raises(ModelNotReady, match="base model 'llama'"):
        await cache.load(lora)
    assert cache.demoted_source("llama-lora") is not None  # still kept
    assert (await cache.load(base)).promoted
    assert (await cache.load(lora)).promoted
    assert generate(cache, "llama-lora") == lora_text
    assert generate(cache, "llama") == base_text  # a base with an adapter in it answers as alone

    # An adapter evicted alone takes its weights out of its base, which stays.
    cache.capacity = cache.used
    generate(cache, "llama")  # the adapter is now the least recently used
    filler = fake_source(tmp_path, "filler", lora_size)
    assert (await cache.load(filler)).evicted == ("llama-lora",)
    assert cache.is_loaded("llama") and not isinstance(module_of(cache, "llama"), PeftModel)
    assert generate(cache, "llama") == base_text
    await cache.unload("filler")
    assert (await cache.load(lora)).promoted
    assert generate(cache, "llama-lora") == lora_text

    # An explicit unload of a base drops its demoted adapters too: they run only inside it.
    await cache.load(filler)  # the adapter demoted again
    assert cache.demoted_source("llama-lora") is not None
    await cache.unload("llama")
    assert cache.demoted_source("llama-lora") is None
    await cache.aclose()
