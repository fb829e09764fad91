"""`mesh serve --models DIR` over Hugging Face models, as a process: streams, adapters beside
their base."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tritonclient.grpc as triton

from tests.helpers import free_port
from tests.llm.test_pod import _inputs, _stream, _text


@pytest.mark.slow
def test_mesh_serve_streams_models_and_adapters(llm_dir: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mesh", "serve", "--models", str(llm_dir), "--port", str(port),
         "--capacity", "2Gi"],
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            try:
                if client.is_server_ready():
                    break
            except Exception:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.2)
        greedy = {"temperature": 0, "max_tokens": 12}
        by_id = _stream(client, "llama-lora", [_inputs("the quick brown", True, **greedy)])
        assert "".join(_text(r) for r in by_id["0"]) == "fox sleeps under the old tree"
        assert len(by_id["0"]) > 3
        by_id = _stream(client, "llama", [_inputs("the quick brown", True, **greedy)])
        assert "".join(_text(r) for r in by_id["0"]) == "fox jumps over the lazy dog"
        whole = client.infer("gpt2", _inputs("hello world", None, temperature=0))
        assert _text(whole) == "this is a tiny language model"
        client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


@pytest.mark.slow
def test_mesh_serve_answers_the_openai_sdk_with_streaming(llm_dir: Path) -> None:
    """The issue's "done when": mesh serve over HF models, the openai SDK, streaming, adapters."""
    import openai

    port, rest = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mesh", "serve", "--models", str(llm_dir), "--port", str(port),
         "--rest-port", str(rest), "--capacity", "2Gi"],
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        sdk = openai.OpenAI(base_url=f"http://127.0.0.1:{rest}/v1", api_key="unused", max_retries=0)
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            try:
                models = {m.id: m.model_extra["parent"] for m in sdk.models.list()}
                break
            except openai.APIConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.3)
        assert models == {"llama": None, "gpt2": None, "llama-lora": "llama"}
        stream = sdk.completions.create(
            model="llama-lora", prompt="the quick brown", max_tokens=12, temperature=0, stream=True
        )
        parts = [c.choices[0].text for c in stream]
        assert "".join(parts) == "fox sleeps under the old tree" and len(parts) > 3
        chat = sdk.chat.completions.create(
            model="llama",
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=4,
            temperature=0,
        )
        assert chat.choices[0].message.role == "assistant" and chat.usage.prompt_tokens == 5
        with pytest.raises(openai.BadRequestError):
            sdk.completions.create(model="llama", prompt="hi", max_tokens=0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
