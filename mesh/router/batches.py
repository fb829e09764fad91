"""Writing many model records in few etcd round trips: what RegisterModels is built on.

One record per RegisterModel costs a round trip to etcd and a raft commit each; 100,000 of
them take minutes. Here records go out in transactions of at most `MAX_TXN_OPS` puts (etcd's
default `--max-txn-ops`) and `MAX_TXN_BYTES` of values (under etcd's default 1.5 MiB request
limit, with room for the keys and framing), a few transactions in flight at once. A
transaction that fails (etcd unreachable, a request too large) fails only its own records:
each record's outcome is its revision or the error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from mesh.cluster.codec import Keys, encode
from mesh.cluster.records import ModelRecord
from mesh.cluster.store import KeyValueStore, Put
from mesh.errors import InvalidRequest, MeshError
from mesh.grpcstatus import status_of

MAX_BATCH = 10_000  # models per RegisterModels call
MAX_TXN_OPS = 128  # etcd's default --max-txn-ops
MAX_TXN_BYTES = 1 << 20  # etcd's default --max-request-bytes is 1.5 MiB
TXNS_IN_FLIGHT = 4


def chunks(puts: Sequence[Put]) -> list[list[Put]]:
    """`puts` cut into transactions within etcd's default limits, in order."""
    out: list[list[Put]] = []
    current: list[Put] = []
    size = 0
    for put in puts:
        n = len(put.key) + len(put.value)
        if current and (len(current) >= MAX_TXN_OPS or size + n > MAX_TXN_BYTES):
            out.append(current)
            current, size = [], 0
        current.append(put)
        size += n
    if current:
        out.append(current)
    return out


def record_put(keys: Keys, record: ModelRecord) -> Put:
    """The write of `record`; InvalidRequest if it is too large for etcd to take."""
    put = Put(keys.model(record.model_id), encode(record))
    if len(put.key) + len(put.value) > MAX_TXN_BYTES:
        raise InvalidRequest(
            f"model {record.model_id!r}: its record is {len(put.value):,} bytes, "
            f"at most {MAX_TXN_BYTES:,} (options too large?)"
        )
    return put


async def register_records(
    store: KeyValueStore, keys: Keys, records: Sequence[ModelRecord]
) -> dict[str, int | MeshError]:
    """Write `records`; by model id, the revision that wrote each or why it was not."""
    out: dict[str, int | MeshError] = {}
    puts = []
    by_key = {}
    for record in records:
        try:
            put = record_put(keys, record)
        except MeshError as exc:
            out[record.model_id] = exc
            continue
        puts.append(put)
        by_key[put.key] = record.model_id
    batches = chunks(puts)
    gate = asyncio.Semaphore(TXNS_IN_FLIGHT)

    async def write(batch: list[Put]) -> None:
        async with gate:
            try:
                result = await store.txn((), batch)
                outcome: int | MeshError = result.revision
            except MeshError as exc:
                outcome = exc
            for put in batch:
                out[by_key[put.key]] = outcome

    await asyncio.gather(*(write(b) for b in batches))
    return out


def error_fields(exc: BaseException) -> dict[str, Any]:
    """A RegisterModelResult's code and message for `exc`, as the single call would fail."""
    return {"code": status_of(exc).value[0], "message": str(exc)}
