"""The OpenAI routes and the v2 generate extension, with the openai SDK and httpx, on a pod
and through a router."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from aiohttp import web

from mesh.gen import management_pb2 as mpb
from mesh.llm import openai as routes
from mesh.llm.backends import PodBackend, RouterBackend
from mesh.pod.artifacts import DirectoryArtifacts
from tests.cluster.conftest import etcd, prefix  # noqa: F401  (shared fixtures)
from tests.cluster.etcd_server import EtcdServer
from tests.helpers import running_pod, running_router, wait_until


class _App:
    """The one method of the process's HTTP app the routes use."""

    def __init__(self) -> None:
        self.web = web.Application()

    def add_route(self, method: str, path: str, handler: Any) -> None:
        self.web.router.add_route(method, path, handler)


def _serve(run: Any, backend: Any) -> tuple[str, Any]:
    app = _App()
    routes.mount(app, backend)

    async def start() -> tuple[web.AppRunner, int]:
        runner = web.AppRunner(app.web)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    runner, port = run(start())
    return f"http://127.0.0.1:{port}", runner


class Front:
    def __init__(self, url: str, plane_of: Any) -> None:
        self.url = url
        self.plane_of = plane_of  # model -> the data plane holding it
        self.sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def pod_front(llm_dir: Path) -> Iterator[Front]:
    with running_pod(models=llm_dir) as pod:
        url, runner = _serve(pod.run, PodBackend(pod.plane))
        yield Front(url, lambda model: pod.plane)
        pod.run(runner.cleanup())


GREEDY = {"temperature": 0}


def test_completions_with_the_openai_sdk(pod_front: Front) -> None:
    done = pod_front.sdk.completions.create(
        model="llama", prompt="the quick brown", max_tokens=12, **GREEDY
    )
    assert done.choices[0].text == "fox jumps over the lazy dog"
    assert done.choices[0].finish_reason == "stop"
    assert done.usage.prompt_tokens == 3 and done.usage.completion_tokens == 7
    assert done.usage.total_tokens == 10
    short = pod_front.sdk.completions.create(
        model="gpt2", prompt="hello world", max_tokens=2, **GREEDY
    )
    assert (short.choices[0].text, short.choices[0].finish_reason) == ("this is", "length")
    stopped = pod_front.sdk.completions.create(
        model="llama", prompt="the quick brown", max_tokens=12, stop=["lazy"], **GREEDY
    )
    assert stopped.choices[0].text == "fox jumps over the "


def test_streamed_completions_end_with_done_and_usage(pod_front: Front) -> None:
    stream = pod_front.sdk.completions.create(
        model="llama",
        prompt="the mesh",
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
        **GREEDY,
    )
    chunks = list(stream)
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(texts) == "serves many models on few machines"
    assert len(texts) > 3
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == 7
    with httpx.stream(
        "POST",
        f"{pod_front.url}/openai/v1/completions",
        json={"model": "llama", "prompt": "hello", "max_tokens": 3, "stream": True},
    ) as raw:
        lines = [line for line in raw.iter_lines() if line]
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]"


def test_chat_completions_use_the_chat_template(pod_front: Front) -> None:
    messages = [{"role": "user", "content": "hello world"}]
    done = pod_front.sdk.chat.completions.create(
        model="llama", messages=messages, max_tokens=6, **GREEDY
    )
    message = done.choices[0].message
    assert message.role == "assistant"
    assert isinstance(message.content, str) and done.usage.completion_tokens > 0
    # The prompt the template made ("user : hello world assistant :") has 6 tokens.
    assert done.usage.prompt_tokens == 6
    stream = pod_front.sdk.chat.completions.create(
        model="llama", messages=messages, max_tokens=6, stream=True, **GREEDY
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == message.content
    assert chunks[-1].choices[0].finish_reason == done.choices[0].finish_reason


def test_models_lists_generative_models_and_adapters_bases(pod_front: Front) -> None:
    models = {m.id: m for m in pod_front.sdk.models.list()}
    assert set(models) == {"llama", "gpt2", "llama-lora"}
    assert models["llama-lora"].model_extra["parent"] == "llama"
    assert models["llama"].model_extra["parent"] is None
    assert pod_front.sdk.models.retrieve("gpt2").id == "gpt2"


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"model": "nope", "prompt": "hi"}, 404),
        ({"model": "llama", "prompt": "hi", "max_tokens": 0}, 400),
        ({"model": "llama", "prompt": "hi", "temperature": -1}, 400),
        ({"model": "llama", "prompt": "hi", "top_p": 1.5}, 400),
        ({"model": "llama", "prompt": "hi", "n": 2}, 400),
        ({"model": "llama", "prompt": "hi " * 200}, 400),  # longer than the context
    ],
)
def test_errors_have_openais_shape_and_status(
    pod_front: Front, kwargs: dict[str, Any], status: int
) -> None:
    with pytest.raises(openai.APIStatusError) as err:
        pod_front.sdk.completions.create(**kwargs)
    assert err.value.status_code == status
    body = err.value.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    raw = httpx.post(f"{pod_front.url}/v1/chat/completions", content=b"{not json")
    assert raw.status_code == 400 and "error" in raw.json()


def test_v2_generate_extension(pod_front: Front) -> None:
    reply = httpx.post(
        f"{pod_front.url}/v2/models/llama/generate",
        json={"text_input": "the quick brown", "parameters": {"temperature": 0, "max_tokens": 12}},
    )
    assert reply.status_code == 200
    assert reply.json()["text_output"] == "fox jumps over the lazy dog"
    assert reply.json()["model_name"] == "llama"
    with httpx.stream(
        "POST",
        f"{pod_front.url}/v2/models/llama-lora/generate_stream",
        json={"text_input": "the quick brown", "temperature": 0, "max_tokens": 12},
    ) as raw:
        events = [json.loads(line[6:]) for line in raw.iter_lines() if line.startswith("data: ")]
    assert "".join(e["text_output"] for e in events) == "fox sleeps under the old tree"
    assert events[-1]["finish_reason"] == "stop"
    bad = httpx.post(f"{pod_front.url}/v2/models/llama/generate", json={"text_input": 3})
    assert bad.status_code == 400


def test_a_client_that_leaves_an_sse_stream_stops_its_generation(pod_front: Front) -> None:
    plane = pod_front.plane_of("llama")
    pod_front.sdk.completions.create(model="llama", prompt="hello", max_tokens=1)  # loaded
    engine = plane.cache._entries["llama"].model.engine
    before = engine.tokens_generated
    with httpx.stream(
        "POST",
        f"{pod_front.url}/v1/completions",
        json={
            "model": "llama",
            "prompt": "hello",
            "max_tokens": 120,
            "stream": True,
            "ignore_eos": True,
        },
    ) as raw:
        for line in raw.iter_lines():
            if line.startswith("data: "):
                break  # first token: leave
    wait_until(lambda: engine.busy() == 0, what="the generation to stop")
    assert engine.tokens_generated - before < 100  # of the 120 it was asked for


def test_openai_sdk_through_the_router_with_an_adapter(
    etcd: EtcdServer,  # noqa: F811
    prefix: str,  # noqa: F811
    llm_dir: Path,
) -> None:
    with ExitStack() as stack:
        pods = [
            stack.enter_context(
                running_pod(
                    artifacts=DirectoryArtifacts(llm_dir),
                    etcd=etcd.url,
                    etcd_prefix=prefix,
                    pod_id=f"pod-{i}",
                    lease_ttl=5,
                )
            )
            for i in range(2)
        ]
        router = stack.enter_context(running_router(etcd=etcd.url, etcd_prefix=prefix))
        for model, path, base in (("llama", "llama", ""), ("llama-lora", "llama-lora", "llama")):
            router.management.RegisterModel(
                mpb.RegisterModelRequest(
                    model_id=model, format="transformers", storage_path=path, base=base
                )
            )
            router.run(router.server.mirror.wait_for(lambda m, model=model: model in m.models))
        url, runner = _serve(router.run, RouterBackend(router.server.router))
        try:
            sdk = openai.OpenAI(base_url=f"{url}/openai/v1", api_key="unused", max_retries=0)
            assert {m.id: m.model_extra["parent"] for m in sdk.models.list()} == {
                "llama": None,
                "llama-lora": "llama",
            }
            stream = sdk.completions.create(
                model="llama-lora", prompt="the quick brown", max_tokens=12, stream=True, **GREEDY
            )
            assert "".join(c.choices[0].text for c in stream) == "fox sleeps under the old tree"
            chat = sdk.chat.completions.create(
                model="llama",
                messages=[{"role": "user", "content": "hello"}],
                max_tokens=4,
                **GREEDY,
            )
            assert chat.usage.prompt_tokens == 5
            holders = [p for p in pods if p.plane.cache.is_loaded("llama-lora")]
            assert len(holders) == 1 and holders[0].plane.cache.is_loaded("llama")
            with pytest.raises(openai.NotFoundError):
                sdk.completions.create(model="nope", prompt="hi")
            with pytest.raises(openai.BadRequestError) as err:
                sdk.completions.create(model="llama", prompt="hi", top_p=0)
            assert "top_p" in err.value.response.json()["error"]["message"]
        finally:
            router.run(runner.cleanup())


def test_a_standalone_pods_rest_port_serves_the_openai_routes(llm_dir: Path) -> None:
    with running_pod(models=llm_dir, rest_port=0) as pod:
        base = f"http://127.0.0.1:{pod.server.rest_port}"
        sdk = openai.OpenAI(base_url=f"{base}/openai/v1", api_key="unused", max_retries=0)
        stream = sdk.completions.create(
            model="gpt2", prompt="the mesh", max_tokens=12, stream=True, **GREEDY
        )
        assert "".join(c.choices[0].text for c in stream) == "serves many models on few machines"
        assert httpx.get(f"{base}/v2/health/ready").status_code == 200  # v2 REST beside it
