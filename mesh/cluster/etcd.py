"""The etcd backend of KeyValueStore, on etcd's v3 gRPC API (message types from aetcd.rpc).

We open our own grpc.aio channel rather than use aetcd.Client, for what the mesh needs and
aetcd leaves out: several endpoints (gRPC fails over between them), TLS and client
certificates, the revision of every read, and watch streams whose errors (compaction, a lost
connection) reach the caller instead of being retried out of sight.

Every gRPC failure is translated where it enters: UNAVAILABLE, DEADLINE_EXCEEDED and friends
become StoreUnavailable; a lease etcd no longer knows becomes LeaseNotFound; a watch from a
compacted revision, Compacted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from aetcd import rpc
from grpc import aio

from mesh.cluster.store import (
    Compare,
    CompareTarget,
    Delete,
    Entry,
    Event,
    EventType,
    Operation,
    Put,
    Range,
    TxnResult,
)
from mesh.errors import Compacted, LeaseNotFound, StoreError, StoreUnavailable

_UNAVAILABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
}
_OPS = {"=": 0, ">": 1, "<": 2, "!=": 3}  # etcd Compare.CompareResult


@dataclass(frozen=True, slots=True)
class EtcdConfig:
    """Where etcd is and how to reach it.

    Several endpoints given as IP addresses are balanced and failed over by gRPC itself; a
    host name is resolved by DNS (one name may stand for the whole cluster), and only the first
    name is used. TLS is on with https:// endpoints or any of the certificate files; without a
    CA file the system's roots verify the server.
    """

    endpoints: tuple[str, ...] = ("127.0.0.1:2379",)
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    timeout: float = 5.0

    @classmethod
    def parse(
        cls,
        url: str,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
    ) -> EtcdConfig:
        """ "http://a:2379,http://b:2379", "a:2379,b:2379" or "https://etcd:2379"."""
        endpoints = []
        tls = any(f is not None for f in (ca_file, cert_file, key_file))
        for part in url.split(","):
            part = part.strip()
            tls = tls or part.startswith("https://")
            part = part.removeprefix("http://").removeprefix("https://").rstrip("/")
            if part:
                endpoints.append(part)
        if not endpoints:
            raise ValueError(f"no etcd endpoint in {url!r}")
        return cls(tuple(endpoints), tls, ca_file, cert_file, key_file)

    def target(self) -> str:
        hosts = [e.rsplit(":", 1)[0] for e in self.endpoints]
        if len(self.endpoints) > 1 and all(_is_ipv4(h) for h in hosts):
            return "ipv4:" + ",".join(self.endpoints)
        return self.endpoints[0]


def _is_ipv4(host: str) -> bool:
    parts = host.split(".")
    return len(parts) == 4 and all(p.isdigit() for p in parts)


def _range_end(prefix: str) -> bytes:
    """The first key after every key that starts with `prefix` (etcd's prefix convention)."""
    raw = bytearray(prefix.encode())
    for i in range(len(raw) - 1, -1, -1):
        if raw[i] < 0xFF:
            raw[i] += 1
            return bytes(raw[: i + 1])
    return b"\0"


def _entry(kv: Any) -> Entry:
    return Entry(
        kv.key.decode(), kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease
    )


def _translate(exc: grpc.RpcError, what: str) -> Exception:
    code = exc.code() if isinstance(exc, aio.AioRpcError) else None
    details = exc.details() if isinstance(exc, aio.AioRpcError) else str(exc)
    if details and "requested lease not found" in details:
        return LeaseNotFound(f"{what}: lease not found")
    if details and "required revision has been compacted" in details:
        return Compacted(f"{what}: {details}")
    if code in _UNAVAILABLE or code is None:
        return StoreUnavailable(f"etcd unreachable during {what}: {code}: {details}")
    return StoreError(f"etcd refused {what}: {code}: {details}")


class EtcdStore:
    """KeyValueStore on etcd.

    >>> store = EtcdStore(EtcdConfig.parse("http://127.0.0.1:2379"))
    >>> await store.put("mesh/models/a", b"{}")
    """

    def __init__(self, config: EtcdConfig) -> None:
        self.config = config
        options = [
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2_000),
            ("grpc.lb_policy_name", "round_robin"),
        ]
        if config.tls:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read(config.ca_file),
                private_key=_read(config.key_file),
                certificate_chain=_read(config.cert_file),
            )
            self._channel = aio.secure_channel(config.target(), creds, options=options)
        else:
            self._channel = aio.insecure_channel(config.target(), options=options)
        self._kv = rpc.KVStub(self._channel)
        self._lease = rpc.LeaseStub(self._channel)
        self._watch = rpc.WatchStub(self._channel)
        self._timeout = config.timeout

    def reconnect(self) -> EtcdStore:
        """A new store on its own channel, for another thread's event loop."""
        return EtcdStore(self.config)

    async def _call(self, what: str, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise _translate(exc, what) from exc

    # -- reads ---------------------------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        response = await self._call("get", self._kv.Range, rpc.RangeRequest(key=key.encode()))
        return _entry(response.kvs[0]) if response.kvs else None

    async def range(self, prefix: str) -> Range:
        request = rpc.RangeRequest(key=prefix.encode(), range_end=_range_end(prefix))
        response = await self._call("range", self._kv.Range, request)
        return Range(tuple(_entry(kv) for kv in response.kvs), response.header.revision)

    async def revision(self) -> int:
        request = rpc.RangeRequest(key=b"\0", count_only=True)
        response = await self._call("revision", self._kv.Range, request)
        return int(response.header.revision)

    # -- writes --------------------------------------------------------------------------------

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        request = rpc.PutRequest(key=key.encode(), value=value, lease=lease)
        response = await self._call("put", self._kv.Put, request)
        return int(response.header.revision)

    async def delete(self, key: str) -> bool:
        request = rpc.DeleteRangeRequest(key=key.encode())
        response = await self._call("delete", self._kv.DeleteRange, request)
        return bool(response.deleted)

    async def delete_prefix(self, prefix: str) -> int:
        request = rpc.DeleteRangeRequest(key=prefix.encode(), range_end=_range_end(prefix))
        response = await self._call("delete", self._kv.DeleteRange, request)
        return int(response.deleted)

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Operation],
        failure: Sequence[Operation] = (),
    ) -> TxnResult:
        request = rpc.TxnRequest(
            compare=[_compare(c) for c in compares],
            success=[_op(o) for o in success],
            failure=[_op(o) for o in failure],
        )
        response = await self._call("transaction", self._kv.Txn, request)
        return TxnResult(bool(response.succeeded), int(response.header.revision))

    # -- leases --------------------------------------------------------------------------------

    async def grant(self, ttl: int) -> int:
        response = await self._call(
            "lease grant", self._lease.LeaseGrant, rpc.LeaseGrantRequest(TTL=ttl)
        )
        if response.error:
            raise StoreError(f"lease grant: {response.error}")
        return int(response.ID)

    async def keep_alive(self, lease: int) -> int:
        # One request on a short-lived stream: simple, and a broken stream cannot linger.
        call = self._lease.LeaseKeepAlive(timeout=self._timeout)
        try:
            await call.write(rpc.LeaseKeepAliveRequest(ID=lease))
            await call.done_writing()
            response = await call.read()
        except grpc.RpcError as exc:
            raise _translate(exc, "lease keep-alive") from exc
        finally:
            call.cancel()
        if response is aio.EOF or response.TTL <= 0:
            raise LeaseNotFound(f"lease {lease:x} has expired")
        return int(response.TTL)

    async def revoke(self, lease: int) -> None:
        with contextlib.suppress(LeaseNotFound):
            await self._call(
                "lease revoke", self._lease.LeaseRevoke, rpc.LeaseRevokeRequest(ID=lease)
            )

    # -- watches and history -------------------------------------------------------------------

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[list[Event]]:
        create = rpc.WatchCreateRequest(
            key=prefix.encode(),
            range_end=_range_end(prefix),
            start_revision=start_revision,
            progress_notify=True,
        )
        call = self._watch.Watch()
        try:
            await call.write(rpc.WatchRequest(create_request=create))
            while True:
                response = await call.read()
                if response is aio.EOF:
                    raise StoreUnavailable("etcd closed the watch stream")
                if response.compact_revision:
                    raise Compacted(
                        f"watch of {prefix!r} from revision {start_revision}: compacted at "
                        f"{response.compact_revision}",
                        int(response.compact_revision),
                    )
                if response.canceled:
                    raise StoreError(f"etcd cancelled the watch: {response.cancel_reason}")
                if response.events:
                    yield [
                        Event(
                            EventType.PUT if ev.type == 0 else EventType.DELETE,
                            ev.kv.key.decode(),
                            ev.kv.value if ev.type == 0 else b"",
                            int(ev.kv.mod_revision),
                        )
                        for ev in response.events
                    ]
        except grpc.RpcError as exc:
            raise _translate(exc, "watch") from exc
        finally:
            call.cancel()

    async def compact(self, revision: int) -> None:
        await self._call(
            "compact", self._kv.Compact, rpc.CompactionRequest(revision=revision, physical=True)
        )

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._channel.close(), 5)


def _read(path: Path | None) -> bytes | None:
    return None if path is None else path.read_bytes()


def _compare(c: Compare) -> Any:
    msg = rpc.Compare(key=c.key.encode(), result=_OPS[c.op])
    if c.target is CompareTarget.VALUE:
        msg.target = rpc.Compare.VALUE
        msg.value = c.value if isinstance(c.value, bytes) else str(c.value).encode()
    elif c.target is CompareTarget.MOD_REVISION:
        msg.target = rpc.Compare.MOD
        msg.mod_revision = int(c.value)
    else:
        msg.target = rpc.Compare.VERSION
        msg.version = int(c.value)
    return msg


def _op(op: Operation) -> Any:
    if isinstance(op, Put):
        return rpc.RequestOp(
            request_put=rpc.PutRequest(key=op.key.encode(), value=op.value, lease=op.lease)
        )
    assert isinstance(op, Delete)
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=op.key.encode()))
