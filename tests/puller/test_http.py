"""HTTP storage against a server that fails on purpose: 500s, cut connections, objects that
change while they download, servers that ignore ranges, credentials echoed back."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mesh.errors import ArtifactChanged, ArtifactNotFound, StorageAccessDenied, StorageUnavailable
from mesh.storageref import StorageRef
from tests.certs import make_certs
from tests.puller.conftest import Rig, every_log_line
from tests.puller.servers import Fault, FaultServer

MB = 1 << 20
TOKEN = "Bearer tok-9d2f61a0b8c54e7f"


def http_entry(server: FaultServer, **extra: Any) -> dict[str, Any]:
    return {"web": {"type": "http", "url": f"{server.url}/models", **extra}}


async def test_500s_then_recovery(http_server: FaultServer, make_rig: Callable[..., Rig]) -> None:
    data = os.urandom(MB)
    http_server.put("models/m.onnx", data)
    http_server.fail(
        Fault("status", 500, method="HEAD"), Fault("status", 503), Fault("status", 500)
    )
    rig = make_rig(http_entry(http_server))
    result = await rig.puller.pull("m", StorageRef("web", "m.onnx"))
    assert result.local_path.read_bytes() == data
    assert rig.metric("mesh_puller_retries_total", reason="unavailable") == 3


async def test_storage_that_keeps_failing_is_unavailable_naming_the_key(
    http_server: FaultServer, make_rig: Callable[..., Rig]
) -> None:
    http_server.put("models/m.onnx", b"x" * 1000)
    http_server.fail(*[Fault("status", 502) for _ in range(10)])
    rig = make_rig(http_entry(http_server), retries=2)
    with pytest.raises(
        StorageUnavailable, match=r"storage 'web': http://127\.0\.0\.1:\d+/models/m"
    ):
        await rig.puller.pull("m", StorageRef("web", "m.onnx"))
    assert rig.metric("mesh_puller_failures_total", reason="StorageUnavailable") == 1
    assert rig.puller.status().used == 0


async def test_a_connection_cut_mid_object_resumes_where_it_stopped(
    http_server: FaultServer, make_rig: Callable[..., Rig]
) -> None:
    data = os.urandom(3 * MB)
    http_server.put("models/big.bin", data)
    http_server.fail(Fault("cut", after=700_000))
    rig = make_rig(http_entry(http_server), range_size=4 * MB)  # one range: easy to follow
    result = await rig.puller.pull("m", StorageRef("web", "big.bin"))
    assert result.local_path.read_bytes() == data
    ranges = [seen.range for seen in http_server.gets("models/big.bin")]
    assert ranges[0] == f"bytes=0-{len(data) - 1}"
    # Resumed at a byte past 0 (what arrived before the cut was kept), not started over.
    resumed = int(ranges[1].removeprefix("bytes=").split("-")[0])
    assert 0 < resumed <= 700_000
    assert rig.metric("mesh_puller_downloaded_bytes_total", type="http") < len(data) + 700_001


async def test_an_object_that_changes_size_during_download_is_fetched_again(
    http_server: FaultServer, make_rig: Callable[..., Rig]
) -> None:
    old, new = os.urandom(2 * MB), os.urandom(2 * MB + 12345)
    http_server.put("models/m.bin", old)
    http_server.fail(Fault("replace", data=new))  # the first range is served, then it changes
    rig = make_rig(http_entry(http_server), range_size=256 << 10, concurrency=1)
    result = await rig.puller.pull("m", StorageRef("web", "m.bin"))
    assert result.local_path.read_bytes() == new
    assert result.size == len(new) == rig.puller.status().used
    assert rig.metric("mesh_puller_retries_total", reason="changed") >= 1


async def test_an_object_that_never_stops_changing_is_unavailable(
    http_server: FaultServer, make_rig: Callable[..., Rig]
) -> None:
    http_server.put("models/m.bin", os.urandom(MB))

    def mutate(path: str) -> None:
        http_server.put(path, os.urandom(MB + len(http_server.state.seen)))

    http_server.state.before_get = mutate
    rig = make_rig(http_entry(http_server), retries=2)
    with pytest.raises(ArtifactChanged, match=r"storage 'web'.*changed"):
        await rig.puller.pull("m", StorageRef("web", "m.bin"))
    assert list((rig.settings.cache_dir / ".tmp").iterdir()) == []
    assert rig.puller.status().reserved == 0


async def test_a_server_without_ranges_still_works(
    http_server: FaultServer, make_rig: Callable[..., Rig]
) -> None:
    data = os.urandom(2 * MB)
    http_server.put("models/m.bin", data)
    http_server.state.ranges = False
    http_server.state.etags = False
    rig = make_rig(http_entry(http_server))
    assert (await rig.puller.pull("m", StorageRef("web", "m.bin"))).local_path.read_bytes() == data


async def test_http_cannot_list_a_prefix(
    http_server: FaultServer, make_rig: Callable[..., Rig]
) -> None:
    rig = make_rig(http_entry(http_server))
    with pytest.raises(ArtifactNotFound, match="cannot list a prefix"):
        await rig.puller.pull("m", StorageRef("web", "some/dir"))


async def test_a_credential_the_server_echoes_back_is_scrubbed(
    http_server: FaultServer, make_rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    http_server.put("models/m.bin", b"x" * 1000)
    # On GET: the server puts the Authorization header it received into its error body, and
    # object stores quote that body in their error (checked below: the faults fired).
    http_server.fail(Fault("status", 403), Fault("status", 500))
    rig = make_rig(http_entry(http_server, headers={"Authorization": TOKEN}), retries=0)
    with pytest.raises(StorageAccessDenied) as denied:
        await rig.puller.pull("m", StorageRef("web", "m.bin"))
    with pytest.raises(StorageUnavailable) as unavailable:  # a 500 whose body has the token
        await rig.puller.pull("m", StorageRef("web", "m.bin"))
    # Both faults were served, to requests that carried the token: it reached the puller.
    assert http_server.fired() == ["GET status 403", "GET status 500"]
    assert http_server.pending() == []
    assert all(s.authorization == TOKEN for s in http_server.state.seen if s.fault)
    for err in (denied.value, unavailable.value):
        assert "storage 'web'" in str(err)
        chain: BaseException | None = err
        while chain is not None:  # the message and every chained cause
            assert "tok-9d2f61a0b8c54e7f" not in str(chain)
            chain = chain.__cause__ or chain.__context__
    # The chained cause is kept for debugging (scrubbed too, checked above).
    assert unavailable.value.__cause__ is not None
    # The server's body was quoted, with the echoed token replaced.
    assert "you sent ***" in str(unavailable.value)
    assert "tok-9d2f61a0b8c54e7f" not in every_log_line(caplog)
    assert "500" in str(unavailable.value)


async def test_https_with_a_custom_ca_is_verified_against_that_ca(
    tmp_path: Path, make_rig: Callable[..., Rig]
) -> None:
    certs = make_certs(tmp_path / "certs")
    server = FaultServer(tls=(certs / "server.crt", certs / "server.key")).start()
    try:
        data = os.urandom(100_000)
        server.put("models/m.bin", data)
        ca = (certs / "ca.crt").read_text()
        rig = make_rig(
            {
                "trusted": {"type": "http", "url": f"{server.url}/models", "certificate": ca},
                "untrusted": {"type": "http", "url": f"{server.url}/models"},
            },
            retries=0,
        )
        pulled = await rig.puller.pull("m", StorageRef("trusted", "m.bin"))
        assert pulled.local_path.read_bytes() == data
        # Without the CA the server's certificate is not trusted: refused, nothing fetched.
        with pytest.raises(StorageUnavailable, match="storage 'untrusted'"):
            await rig.puller.pull("m2", StorageRef("untrusted", "m.bin"))
        assert [s.path for s in server.state.seen if s.method == "GET"] == ["/models/m.bin"]
    finally:
        server.stop()
