"""The capacity page: its data from the mirror, its routes, and the page in a real browser
(Debian's chromium) over a real mesh: both pods drawn, a model appearing after a load."""

from __future__ import annotations

import asyncio
import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from aiohttp import web

from mesh.cluster.records import InstanceRecord, ModelRecord, PlacementState
from mesh.router.dashboard import mount, page_data
from mesh.router.overview import Activity, Overview, snapshot
from tests.cluster.etcd_server import EtcdServer
from tests.helpers import RunningPod, RunningRouter, running_router, wait_until
from tests.router.test_overview import Records

SCREENSHOTS = Path("/tmp/mesh-dashboard")


@contextmanager
def serving(source: Callable[[], Overview], token: str | None = None,
            loop: asyncio.AbstractEventLoop | None = None) -> Iterator[str]:  # fmt: skip
    """The page's routes on an aiohttp server on port 0 (on `loop`, or a private one)."""
    import threading

    own = loop is None
    if loop is None:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
    app = web.Application()
    mount(app.router, source, token)
    runner = web.AppRunner(app)

    async def start() -> int:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        if own:
            loop.call_soon_threadsafe(loop.stop)


def _get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _mesh_of_two() -> Records:
    mesh = Records(
        models={"hot": ModelRecord("hot", "onnx"), "bad": ModelRecord("bad", "onnx")},
        instances={
            "a": InstanceRecord(
                "a",
                "a:1",
                1000,
                used=600,
                lru_time=40.0,
                updated_at=99.0,
                device="cuda:0",
                host_capacity=4000,
                host_used=300,
                host_models=("cold",),
            ),
            "b": InstanceRecord("b", "b:1", 1000, draining=True, updated_at=98.0, device="host"),
        },
    )
    mesh.place("hot", "a", PlacementState.LOADED, size=600, last_used=90.0)
    mesh.place("bad", "b", PlacementState.FAILED, error="corrupt")
    return mesh


def test_page_data_draws_each_pod_its_models_ages_and_failures() -> None:
    activity = Activity()
    activity.record("loads", "a", 95.0)
    data = page_data(snapshot(_mesh_of_two(), activity, None, now=100.0))
    a, b = data["pods"]
    assert a["tiers"] == [
        {"name": "device cuda:0", "capacity": 1000, "used": 600},
        {"name": "host", "capacity": 4000, "used": 300},
    ]
    assert a["host_models"] == ["cold"]
    assert b["tiers"] == [{"name": "memory", "capacity": 1000, "used": 0}]  # no host tier
    assert [(m["model_id"], m["idle"]) for m in a["models"]] == [("hot", 10.0)]
    assert (a["lru_age"], a["heartbeat_age"], a["recent"]["loads"]) == (60.0, 1.0, 1)
    assert b["draining"] is True and b["models"] == [] and b["lru_age"] is None
    assert data["failures"] == [{"model_id": "bad", "message": "b: corrupt"}]
    assert data["totals"] == {
        "pods": 2, "capacity": 2000, "used": 600, "models": 2, "loaded": 1, "copies": 1,
        "failed": 1, "lru_age": 60.0,
    }  # fmt: skip
    assert data["activity"][-1]["loads"] == 1
    json.dumps(data)  # plain JSON types throughout


def test_the_page_and_its_assets_come_from_the_router_alone() -> None:
    view = snapshot(_mesh_of_two(), Activity(), None, now=100.0)
    with serving(lambda: view) as base:
        status, headers, body = _get(base + "/dashboard")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        html = body.decode()
        # Every asset is the router's own: no other origin, no inline script.
        assert "http://" not in html and "https://" not in html and "<script>" not in html
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        for asset, kind in (("/dashboard/app.js", "application/javascript"),
                            ("/dashboard/app.css", "text/css")):  # fmt: skip
            assert asset in html
            status, headers, body = _get(base + asset)
            assert status == 200 and headers["Content-Type"].startswith(kind) and body
            assert b"https://" not in body
        status, _, body = _get(base + "/dashboard/api/mesh")
        assert status == 200 and json.loads(body)["totals"]["pods"] == 2
    with serving(lambda: view, token="s3cret") as base:
        assert _get(base + "/dashboard")[0] == 200  # the page holds no data
        assert _get(base + "/dashboard/api/mesh")[0] == 401
        assert _get(base + "/dashboard/api/mesh", Authorization="Bearer nope")[0] == 401
        assert _get(base + "/dashboard/api/mesh", Authorization="Bearer s3cret")[0] == 200


def _infer(router: RunningRouter, model: str) -> None:
    client = triton.InferenceServerClient(router.address)
    x = triton.InferInput("input", [1, 64], "FP32")
    x.set_data_from_numpy(np.zeros((1, 64), np.float32))
    client.infer(model, [x])


@pytest.mark.slow
def test_the_page_in_chromium_shows_both_pods_and_a_model_after_its_load(
    etcd: EtcdServer, prefix: str, pods: list[RunningPod], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    from mesh.gen import management_pb2 as mpb
    from tests.browser import chromium

    with (
        running_router(etcd=etcd.url, etcd_prefix=prefix, rest_port=0) as router,
        chromium(tmp_path / "profile") as browser,
    ):
        # The page on the router's own REST port, as `mesh router` serves it.
        base = f"http://{router.rest}"
        browser.get(base + "/dashboard")

        def drawn_pods() -> list[str]:
            cards = browser.find_elements(By.CSS_SELECTOR, "article.pod")
            return sorted(c.get_attribute("data-pod") for c in cards)

        assert wait_until(lambda: drawn_pods() == ["pod-0", "pod-1"], what="both pods drawn")
        assert browser.find_elements(By.CSS_SELECTOR, "li.model") == []
        bars = browser.find_elements(By.CSS_SELECTOR, "article.pod .tier .bar")
        assert [b.get_attribute("aria-valuemax") for b in bars] == [str(2**30)] * 2

        router.management.RegisterModel(
            mpb.RegisterModelRequest(model_id="mlp", format="onnx", storage_path="mlp")
        )
        _infer(router, "mlp")  # a miss: the mesh loads it on one pod

        def model_card() -> str:
            found = browser.find_elements(By.CSS_SELECTOR, 'li.model[data-model="mlp"]')
            if not found:
                return ""
            return found[0].find_element(By.XPATH, "ancestor::article").get_attribute("data-pod")

        holder = wait_until(model_card, what="mlp drawn on the pod that loaded it")
        assert holder in ("pod-0", "pod-1")
        card = browser.find_element(By.CSS_SELECTOR, f'article.pod[data-pod="{holder}"]')
        wait_until(lambda: int(card.find_element(By.CSS_SELECTOR, ".bar").get_attribute(
            "aria-valuenow")) > 0, what="the holder's used bytes above 0")  # fmt: skip
        # The last minutes show the load.
        assert "1 loads" in browser.find_element(By.CSS_SELECTOR, "#activity svg").get_attribute(
            "aria-label"
        )
        assert "live" in browser.find_element(By.ID, "status").text
        shot = tmp_path / "dashboard.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        SCREENSHOTS.mkdir(exist_ok=True)
        shutil.copy(shot, SCREENSHOTS / "dashboard.png")  # to look at after a run
