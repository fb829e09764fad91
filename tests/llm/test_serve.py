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
