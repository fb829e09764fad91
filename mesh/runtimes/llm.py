"""Causal language models in Hugging Face's layout (format `transformers`), and LoRA adapters.

A model directory holds `config.json`, `*.safetensors`, the tokenizer's files and optionally
`generation_config.json` and a chat template; a directory with peft's `adapter_config.json` is a
LoRA adapter on a base model loaded on the same pod (docs/llm.md). A base model runs in its own
generation engine (mesh.llm.engine), which batches concurrent requests step by step; an adapter
is a name inside its base's engine, so adapters share one copy of the base and a mixed batch
runs base and adapter rows in one forward pass (peft's `adapter_names`).

Charge: a base model's size hint is its weights plus its KV-cache budget (`kv_cache_tokens`
tokens of every layer's keys and values), so the cache charges what generation may come to
hold; an adapter's is its own weights. Loads fail with InvalidRequest for bad options and with
the framework's error otherwise (the pod turns it into ModelLoadFailed).

Host tier (mesh.pod.hosttier): both demote themselves, on a GPU pod and on a CPU-only one
(`demote_on_host`), keeping the live torch objects so that a promotion costs only the move back.
A base's engine stops and its module moves to the CPU with its tokenizer and engine settings; a
promotion moves it back and starts a new engine. An adapter's LoRA weights leave its base's
module (as an unload would take them out) and are kept on the CPU with its peft config; its
promotion puts them into the base loaded at that time, so it needs its base loaded first. The
cache demotes a base's adapters before the base, so a base never moves with adapters in it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from mesh.errors import InvalidRequest, ModelNotReady
from mesh.llm.chunks import Chunk
from mesh.llm.engine import AsyncStream, Engine, collect
from mesh.llm.params import SamplingParams
from mesh.runtimes.base import HostCopy, LoadRequest, int_option
from mesh.runtimes.hf import ADAPTER_CONFIG, TRANSFORMERS
from mesh.tensors import Signature, TensorSpec

log = logging.getLogger(__name__)

TEXT_INPUT = "text_input"
TEXT_OUTPUT = "text_output"
SIGNATURE = Signature.of(
    (TensorSpec(TEXT_INPUT, "BYTES", (-1,)),), (TensorSpec(TEXT_OUTPUT, "BYTES", (-1,)),)
)
_DEFAULT_MAX_BATCH = 16
_DEFAULT_KV_TOKENS_CAP = 8192
_DTYPES = ("auto", "float32", "float16", "bfloat16")


class GenerativeModel:
    """A loaded causal LM (or an adapter on one): stream text, or predict whole texts.

    >>> stream = model.stream(model.encode("hello"), SamplingParams(max_tokens=8))
    >>> async for chunk in stream: print(chunk.text, end="")
    """

    platform = "transformers"
    signature = SIGNATURE
    generative = True
    # The host tier keeps this model's live objects on a CPU-only pod too (no file bytes: a
    # model directory, and a re-load would be the whole from_pretrained again).
    demote_on_host = True

    def __init__(
        self,
        engine: Engine,
        *,
        adapter: str | None = None,
        base_id: str | None = None,
        weight_bytes: int,
        kv_bytes: int = 0,
    ) -> None:
        self.engine = engine
        self.adapter = adapter
        self.base_id = base_id
        self._weight_bytes = weight_bytes
        self._kv_bytes = kv_bytes
        self._closed = False

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer(text)["input_ids"]
        return ids

    def chat_prompt(self, messages: Sequence[Mapping[str, Any]]) -> str:
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise InvalidRequest(f"model {self.engine.name!r} has no chat template")
        try:
            text = self.tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:  # jinja errors: the messages do not fit the template
            raise InvalidRequest(f"the chat template rejected the messages: {exc}") from exc
        return str(text)

    def check(self, prompt: list[int], params: SamplingParams) -> None:
        self.engine.check(len(prompt), params)

    def stream(self, prompt: list[int], params: SamplingParams) -> AsyncStream:
        """Start generating on the running event loop; iterate the result for chunks."""
        if self._closed:
            raise ModelNotReady("the model is being unloaded")
        stream = AsyncStream(self.engine, self.adapter)
        stream.start(prompt, params)
        return stream

    def complete(self, prompt: list[int], params: SamplingParams) -> Chunk:
        """Generate to the end in this (worker) thread."""
        return collect(self.engine, prompt, params, self.adapter)

    def predict(
        self, inputs: Mapping[str, np.ndarray[Any, Any]], outputs: Sequence[str]
    ) -> Mapping[str, np.ndarray[Any, Any]]:
        texts = inputs[TEXT_INPUT].reshape(-1)
        results = []
        for text in texts:
            raw = text.decode() if isinstance(text, bytes) else str(text)
            results.append(self.complete(self.encode(raw), SamplingParams()).text.encode())
        return {TEXT_OUTPUT: np.array(results, dtype=object)}

    def size_hint(self) -> int | None:
        return self._weight_bytes + self._kv_bytes

    def close(self) -> None:
        self._closed = True
        if self.adapter is None:
            self.engine.close()
            self.engine.model = None
        else:
            name = self.adapter
            self.engine.call(lambda engine: _detach(engine, name))
        # On a GPU torch's caching allocator keeps the freed blocks: the unload check must see
        # the memory come back.
        _empty_device_cache(self.engine.device)

    def demote(self) -> HostCopy | None:
        """To host memory, for the pod's host tier (no request in flight): a base's module and
        tokenizer with its engine stopped; an adapter's weights out of its base. None when it
        cannot (a base with adapters still attached)."""
        if self.adapter is not None:
            name = self.adapter
            self._closed = True
            peft_class, config, state = self.engine.call(lambda e: _detach_to_host(e, name))
            return _AdapterOnHost(name, peft_class, config, state)
        engine = self.engine
        if engine.adapters:
            log.warning(
                "model %s not demoted: adapters %s are still attached",
                engine.name,
                sorted(engine.adapters),
            )
            return None
        self._closed = True
        engine.close()  # its thread ends; nothing is queued (no request in flight)
        module, engine.model = engine.model, None
        module = module.to("cpu")
        _empty_device_cache(engine.device)
        return _EngineOnHost(
            module,
            engine.tokenizer,
            _EngineSettings(
                max_batch=engine.max_batch,
                kv_tokens=engine.kv_tokens,
                context=engine.context,
                eos_ids=tuple(engine.eos_ids),
            ),
            weight_bytes=self._weight_bytes,
            kv_bytes=self._kv_bytes,
        )


@dataclass(frozen=True, slots=True)
class _EngineSettings:
    max_batch: int  # already 1 for a model that cannot batch
    kv_tokens: int
    context: int
    eos_ids: tuple[int, ...]


class _EngineOnHost:
    """A demoted base: its module on the CPU; `restore` moves it to the request's device and
    starts a new engine on it."""

    def __init__(
        self,
        module: Any,
        tokenizer: Any,
        settings: _EngineSettings,
        *,
        weight_bytes: int,
        kv_bytes: int,
    ) -> None:
        self._module = module
        self._tokenizer = tokenizer
        self._settings = settings
        self._weight_bytes = weight_bytes
        self._kv_bytes = kv_bytes
        self.nbytes = weight_bytes

    def restore(self, request: LoadRequest) -> GenerativeModel:
        if self._module is None:
            raise RuntimeError("the host copy was already let go")
        device = str(request.device)
        module = self._module.to(device)
        settings = self._settings
        engine = Engine(
            module,
            self._tokenizer,
            name=request.model_id,
            max_batch=settings.max_batch,
            kv_tokens=settings.kv_tokens,
            context=settings.context,
            eos_ids=settings.eos_ids,
            device=device,
        )
        engine.start()
        self._module = None  # the model's now
        return GenerativeModel(engine, weight_bytes=self._weight_bytes, kv_bytes=self._kv_bytes)

    def close(self) -> None:
        self._module = None
        self._tokenizer = None


class _AdapterOnHost:
    """A demoted adapter: its peft config and LoRA weights on the CPU; `restore` puts them into
    the base the request names (which must be loaded)."""

    def __init__(self, name: str, peft_class: Any, config: Any, state: dict[str, Any]) -> None:
        self._name = name
        self._peft_class = peft_class
        self._config = config
        self._state: dict[str, Any] | None = state
        self.nbytes = sum(t.numel() * t.element_size() for t in state.values())

    def restore(self, request: LoadRequest) -> GenerativeModel:
        base = request.base
        if not isinstance(base, GenerativeModel) or base.adapter is not None:
            raise ModelNotReady(f"adapter {request.model_id!r} needs its base model loaded")
        state = self._state
        if state is None:
            raise RuntimeError("the host copy was already let go")
        name, peft_class, config = request.model_id, self._peft_class, self._config
        weights = base.engine.call(lambda e: _attach_from_host(e, name, peft_class, config, state))
        return GenerativeModel(
            base.engine, adapter=name, base_id=base.engine.name, weight_bytes=weights
        )

    def close(self) -> None:
        self._state = None


class TransformersRuntime:
    name: ClassVar[str] = TRANSFORMERS
    # Detected from config.json / adapter_config.json by the repository, not by suffix.
    suffixes: ClassVar[tuple[str, ...]] = ()
    option_keys: ClassVar[frozenset[str]] = frozenset(
        {"max_batch", "kv_cache_tokens", "max_context", "dtype", "intra_op_threads"}
    )
    size_factor: ClassVar[float] = 1.5
    requires: ClassVar[tuple[str, ...]] = ("transformers", "tokenizers", "safetensors", "torch")

    def warm_up(self) -> None:
        import torch
        import transformers

        transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        transformers.utils.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
        from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

        with contextlib.suppress(ImportError):  # adapters need it; without it they fail to load
            import peft  # noqa: F401

        with torch.inference_mode():
            torch.nn.Linear(2, 2)(torch.zeros(1, 2))

    def load(self, request: LoadRequest) -> GenerativeModel:
        if request.file.name == ADAPTER_CONFIG:
            return self._load_adapter(request)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        options = request.options
        dtype = options.get("dtype", "auto")
        if dtype not in _DTYPES:
            raise InvalidRequest(f"option dtype={dtype!r}: one of {list(_DTYPES)}")
        threads = int_option(options, "intra_op_threads", 0, 0)
        if threads:
            torch.set_num_threads(threads)
        directory = request.file.parent
        device = str(request.device)
        if dtype == "auto":
            torch_dtype = torch.float16 if request.device.is_cuda else torch.float32
        else:
            torch_dtype = getattr(torch, dtype)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model: Any = AutoModelForCausalLM.from_pretrained(directory, dtype=torch_dtype)
        model = model.to(device).eval()
        config = model.config
        positions = _first_attr(config, ("max_position_embeddings", "n_positions"), 2048)
        context = int_option(options, "max_context", positions, 2)
        max_batch = int_option(options, "max_batch", _DEFAULT_MAX_BATCH, 1)
        default_kv = max(context, min(max_batch * context, _DEFAULT_KV_TOKENS_CAP))
        kv_tokens = int_option(options, "kv_cache_tokens", default_kv, 1)
        element = torch.finfo(torch_dtype).bits // 8
        kv_bytes = kv_tokens * _kv_bytes_per_token(config, element)
        try:
            generation = GenerationConfig.from_pretrained(directory)
            eos: Any = generation.eos_token_id
        except OSError:
            eos = None
        if eos is None:
            eos = config.eos_token_id if config.eos_token_id is not None else tokenizer.eos_token_id
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        weights = sum(t.numel() * t.element_size() for t in model.parameters())
        weights += sum(t.numel() * t.element_size() for t in model.buffers())
        engine = Engine(
            model,
            tokenizer,
            name=request.model_id,
            max_batch=max_batch,
            kv_tokens=kv_tokens,
            context=context,
            eos_ids=eos_ids,
            device=device,
            batchable=not getattr(config, "sliding_window", None),
        )
        engine.start()
        return GenerativeModel(engine, weight_bytes=weights, kv_bytes=kv_bytes)

    def _load_adapter(self, request: LoadRequest) -> GenerativeModel:
        base = request.base
        if not isinstance(base, GenerativeModel) or base.adapter is not None:
            raise InvalidRequest(
                f"adapter {request.model_id!r} needs a base model in format transformers"
            )
        name = request.model_id
        directory = request.file.parent
        weights = base.engine.call(lambda engine: _attach(engine, name, str(directory)))
        return GenerativeModel(
            base.engine, adapter=name, base_id=base.engine.name, weight_bytes=weights
        )


def _attach(engine: Engine, name: str, directory: str) -> int:
    """Add an adapter to the base's model (on the engine thread); its weights' bytes."""
    import warnings

    from peft import PeftModel

    if name in engine.adapters:
        raise InvalidRequest(f"adapter {name!r} is already attached to {engine.name!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft calls transformers' deprecated API
        if isinstance(engine.model, PeftModel):
            engine.model.load_adapter(directory, adapter_name=name)
        else:
            engine.model = PeftModel.from_pretrained(engine.model, directory, adapter_name=name)
    engine.model.eval()
    engine.adapters.add(name)
    marker = f".{name}."
    return sum(
        p.numel() * p.element_size() for n, p in engine.model.named_parameters() if marker in n
    )


def _detach(engine: Engine, name: str) -> None:
    import warnings

    from peft import PeftModel

    if name not in engine.adapters or not isinstance(engine.model, PeftModel):
        return
    engine.adapters.discard(name)
    if engine.adapters:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "adapter was active, now deleted"
            engine.model.delete_adapter(name)
    else:
        # The last adapter: take peft's layers out and keep the untouched base model.
        engine.model = engine.model.unload()


def _detach_to_host(engine: Engine, name: str) -> tuple[Any, Any, dict[str, Any]]:
    """Take an adapter out of the base's module (on the engine thread), keeping its peft class,
    config and weights on the CPU."""
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict

    model = engine.model
    if name not in engine.adapters or not isinstance(model, PeftModel):
        raise RuntimeError(f"adapter {name!r} is not attached to {engine.name!r}")
    config = copy.deepcopy(model.peft_config[name])
    weights = get_peft_model_state_dict(model, adapter_name=name, save_embedding_layers=False)
    # On a GPU a copy to the CPU; on the CPU the tensors themselves, kept past the detach.
    state = {key: t.detach().to("cpu") for key, t in weights.items()}
    _detach(engine, name)
    _empty_device_cache(engine.device)
    return type(model), config, state


def _attach_from_host(
    engine: Engine, name: str, peft_class: Any, config: Any, state: dict[str, Any]
) -> int:
    """Put a demoted adapter back into the base's module (on the engine thread), as `_attach`
    does from its files; its weights' bytes."""
    import warnings

    from peft import PeftModel
    from peft.utils import set_peft_model_state_dict

    if name in engine.adapters:
        raise InvalidRequest(f"adapter {name!r} is already attached to {engine.name!r}")
    config = copy.deepcopy(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft calls transformers' deprecated API
        if isinstance(engine.model, PeftModel):
            engine.model.add_adapter(name, config)
        else:
            engine.model = peft_class(engine.model, config, adapter_name=name)
        set_peft_model_state_dict(engine.model, state, adapter_name=name)
    engine.model.eval()
    engine.adapters.add(name)
    marker = f".{name}."
    return sum(
        p.numel() * p.element_size() for n, p in engine.model.named_parameters() if marker in n
    )


def _empty_device_cache(device: str) -> None:
    if device.startswith("cuda"):
        import gc

        import torch

        # torch's caching allocator keeps freed blocks: without this the device's memory does
        # not come back and the pod's unload check counts it against the runtime.
        gc.collect()
        torch.cuda.empty_cache()


def _first_attr(config: Any, names: Sequence[str], default: int) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return default


def _kv_bytes_per_token(config: Any, element: int) -> int:
    layers = _first_attr(config, ("num_hidden_layers", "n_layer"), 1)
    heads = _first_attr(config, ("num_attention_heads", "n_head"), 1)
    kv_heads = _first_attr(config, ("num_key_value_heads",), heads)
    hidden = _first_attr(config, ("hidden_size", "n_embd"), heads)
    head_dim = _first_attr(config, ("head_dim",), hidden // heads)
    return 2 * layers * kv_heads * head_dim * element
