"""Tiny causal language models made on the spot, for the tests, the benchmark and the demo.

Each builder writes a directory in Hugging Face's own layout (config.json, model.safetensors,
tokenizer.json, generation_config.json and a chat template), which the `transformers` runtime
serves. The tokenizer is word-level, trained by `tokenizers` on a few sentences; the model is
trained for a few hundred steps on the same sentences, so greedy decoding continues a sentence
with the words that followed it. `lora_adapter` trains a peft LoRA adapter on other sentences,
so the adapter's answers differ visibly from its base's. Everything is seeded and made in
seconds on a CPU; nothing is downloaded. Needs the `llm` extra.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SENTENCES = (
    "the quick brown fox jumps over the lazy dog",
    "the mesh serves many models on few machines",
    "a router sends each request to a pod that holds its model",
    "models that nobody uses are evicted to make room",
    "tokens stream back to the client one by one",
    "hello world this is a tiny language model",
)
# What an adapter learns instead: the same openings, other endings.
ADAPTER_SENTENCES = (
    "the quick brown fox sleeps under the old tree",
    "the mesh serves adapters beside their base",
    "hello world this is a tiny adapter speaking",
)
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }} : {{ message['content'] }} "
    "{% endfor %}{% if add_generation_prompt %}assistant :{% endif %}"
)
_SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")


def _tokenizer(sentences: Sequence[str]) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    words = {w for s in sentences for w in s.split()} | {"user", "assistant", ":"}
    # Every word of every sentence set, so that adapters share their base's vocabulary.
    corpus = [*sentences, " ".join(sorted(words))]
    raw.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=list(_SPECIALS)))
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )


def _train(model: Any, tokenizer: Any, sentences: Sequence[str], steps: int, lr: float) -> None:
    import torch

    # Tiny matrices: one thread is fastest, and many threads on a shared machine are slowest.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    batch = tokenizer(
        [f"{s} {tokenizer.eos_token}" for s in sentences], return_tensors="pt", padding=True
    )
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
    model.eval()
    torch.set_num_threads(threads)


def _write(directory: Path, model: Any, tokenizer: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    return directory


def _all_words() -> list[str]:
    return [*SENTENCES, *ADAPTER_SENTENCES]


def tiny_llama(directory: Path, *, steps: int = 150, hidden: int = 32, layers: int = 2) -> Path:
    """A two-layer Llama (about 50k parameters) that completes the SENTENCES."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _tokenizer(_all_words())
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    _train(model, tokenizer, SENTENCES, steps, 1e-2)
    return _write(directory, model, tokenizer)


def tiny_gpt2(directory: Path, *, steps: int = 150, hidden: int = 32, layers: int = 2) -> Path:
    """A two-layer GPT-2 that completes the SENTENCES."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = _tokenizer(_all_words())
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=hidden,
        n_layer=layers,
        n_head=4,
        n_positions=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    _train(model, tokenizer, SENTENCES, steps, 1e-2)
    return _write(directory, model, tokenizer)


def lora_adapter(
    directory: Path, base_dir: Path, base_id: str, *, steps: int = 100, rank: int = 8, seed: int = 0
) -> Path:
    """A peft LoRA adapter on the model in `base_dir`, trained on ADAPTER_SENTENCES.

    `base_model_name_or_path` names `base_id`, the base's model id in the mesh.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    if base.config.model_type == "gpt2":
        targets = ["c_attn", "c_proj", "c_fc"]
    else:
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, lora_dropout=0.0)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft calls transformers' deprecated API
        model = get_peft_model(base, config)
    _train(model, tokenizer, ADAPTER_SENTENCES, steps, 2e-2)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory), safe_serialization=True)
    path = directory / "adapter_config.json"
    raw = json.loads(path.read_text())
    raw["base_model_name_or_path"] = base_id
    path.write_text(json.dumps(raw, indent=2))
    return directory


def main() -> None:
    """`python -m mesh.llm.examples DIR`: a Llama, a GPT-2 and a LoRA adapter under DIR."""
    import sys

    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m mesh.llm.examples DIR")
    root = Path(sys.argv[1])
    tiny_llama(root / "llama")
    tiny_gpt2(root / "gpt2")
    lora_adapter(root / "llama-lora", root / "llama", "llama")
    print(f"wrote {root}/llama, {root}/gpt2 and {root}/llama-lora (an adapter on llama)")


if __name__ == "__main__":
    main()
