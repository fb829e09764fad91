"""The watch-fed mirror converges: on both backends, through etcd restarts, cut connections and
compaction past its revision."""

from __future__ import annotations

import pytest

from mesh.cluster.codec import Keys, encode
from mesh.cluster.etcd import EtcdConfig, EtcdStore
from mesh.cluster.mirror import Change, Mirror
from mesh.cluster.records import (
    InstanceRecord,
    ModelRecord,
    PlacementRecord,
    PlacementState,
    VModelRecord,
)
from mesh.cluster.store import KeyValueStore
from mesh.errors import Compacted
from mesh.retry import Backoff
from tests.cluster.etcd_server import EtcdServer
from tests.cluster.proxy import TcpProxy

FAST = Backoff(0.05, 0.5)


async def test_mirror_loads_then_follows_and_tells_subscribers(
    store: KeyValueStore, prefix: str
) -> None:
    keys = Keys(prefix)
    await store.put(keys.model("a"), encode(ModelRecord("a", "onnx")))
    mirror = Mirror(store, keys, FAST)
    seen: list[Change] = []
    mirror.subscribe(seen.extend)
    await mirror.start()
    try:
        assert set(mirror.models) == {"a"}
        await store.put(keys.instance("pod-1"), encode(InstanceRecord("pod-1", "h:1", 100)))
        placement = PlacementRecord("a", "pod-1", PlacementState.LOADED, 1.0, 10)
        await store.put(keys.placement("a", "pod-1"), encode(placement))
        await store.put(keys.vmodel("v"), encode(VModelRecord("v", "a")))
        await store.put(keys.model("bad"), b"{not json")
        await mirror.wait_for(lambda m: "v" in m.vmodels)
        assert mirror.placements["a"]["pod-1"] == placement
        assert mirror.instances["pod-1"].capacity == 100
        assert "bad" not in mirror.models  # undecodable: treated as absent, mirror alive
        await store.delete(keys.placement("a", "pod-1"))
        await mirror.wait_for(lambda m: "a" not in m.placements)
        assert [c.kind for c in seen] == ["model", "instance", "placement", "vmodel", "placement"]
        assert seen[-1].record is None
        assert mirror.revision == await store.revision()
    finally:
        await mirror.aclose()


class _CompactOnce:
    """A store whose first watch fails as if history were compacted past the mirror."""

    def __init__(self, inner: KeyValueStore) -> None:
        self._inner = inner
        self.failed = False

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def watch(self, prefix: str, start_revision: int):  # type: ignore[no-untyped-def]
        if not self.failed:
            self.failed = True
            raise Compacted("compacted", start_revision + 5)
        async for batch in self._inner.watch(prefix, start_revision):
            yield batch


async def test_mirror_reloads_when_its_watch_is_compacted(
    store: KeyValueStore, prefix: str
) -> None:
    keys = Keys(prefix)
    wrapped = _CompactOnce(store)
    mirror = Mirror(wrapped, keys, FAST)  # type: ignore[arg-type]
    await mirror.start()
    try:
        await store.put(keys.model("late"), encode(ModelRecord("late", "onnx")))
        await mirror.wait_for(lambda m: "late" in m.models)
        assert wrapped.failed
        assert mirror.resyncs >= 2
    finally:
        await mirror.aclose()


@pytest.mark.slow
async def test_mirror_converges_through_a_cut_and_compaction_past_its_revision(
    etcd: EtcdServer, prefix: str
) -> None:
    keys = Keys(prefix)
    direct = EtcdStore(EtcdConfig.parse(etcd.url))
    with TcpProxy(etcd.client_port) as proxy:
        through = EtcdStore(
            EtcdConfig.parse(
                proxy.url,
            )
        )
        await direct.put(keys.model("a"), encode(ModelRecord("a", "onnx")))
        await direct.put(keys.model("b"), encode(ModelRecord("b", "onnx")))
        mirror = Mirror(through, keys, FAST)
        await mirror.start()
        try:
            assert set(mirror.models) == {"a", "b"}
            proxy.cut()
            # While the mirror is cut off: a delete, a new model, and history compacted away.
            await direct.delete(keys.model("a"))
            await direct.put(keys.model("c"), encode(ModelRecord("c", "xgboost")))
            await direct.compact(await direct.revision())
            proxy.restore()
            await mirror.wait_for(lambda m: set(m.models) == {"b", "c"}, timeout=20)
            assert mirror.resyncs >= 2
        finally:
            await mirror.aclose()
            await through.aclose()
    await direct.aclose()


@pytest.mark.slow
async def test_mirror_converges_through_an_etcd_restart(etcd: EtcdServer, prefix: str) -> None:
    keys = Keys(prefix)
    store = EtcdStore(EtcdConfig.parse(etcd.url))
    mirror = Mirror(store, keys, FAST)
    await store.put(keys.model("a"), encode(ModelRecord("a", "onnx")))
    await mirror.start()
    try:
        etcd.restart()
        await store.put(keys.model("b"), encode(ModelRecord("b", "onnx")))
        await mirror.wait_for(lambda m: set(m.models) == {"a", "b"}, timeout=20)
    finally:
        await mirror.aclose()
        await store.aclose()


async def test_a_hand_written_old_record_with_a_storage_option_no_string_does_not_stall_it(
    store: KeyValueStore, prefix: str
) -> None:
    """A record from before StorageRef whose "storage.unpack" is a number (etcdctl by hand):
    the mirror still loads everything (it used to fail on it at every resync, and never
    became ready)."""
    keys = Keys(prefix)
    old = b'{"model_id":"old","format":"onnx","storage_path":"m","options":{"storage.unpack":1}}'
    await store.put(keys.model("old"), old)
    await store.put(keys.model("z"), encode(ModelRecord("z", "onnx")))
    mirror = Mirror(store, keys, FAST)
    await mirror.start(timeout=10)
    try:
        assert set(mirror.models) == {"old", "z"}
    finally:
        await mirror.aclose()
