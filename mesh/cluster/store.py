"""The small key-value interface the mesh coordinates through, and its value types.

Two backends implement it and pass one contract suite (tests/cluster/test_store_contract.py):
`EtcdStore` (mesh/cluster/etcd.py) and `MemoryStore` (mesh/cluster/memory.py). Recipes (the
mirror, leased registration, leader election) are written only against this interface.

Semantics follow etcd's: one revision counter for the whole store, incremented by each write
(a transaction is one write); per-key create and mod revisions and a version; leases with a TTL
whose expiry deletes their keys; watches of a prefix from a revision, which fail with Compacted
when that revision is no longer in history. Keys are text; values are bytes.

Failure: an unreachable store raises StoreUnavailable; an expired lease, LeaseNotFound; a watch
from a compacted revision, Compacted (mesh.errors).
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Range:
    entries: tuple[Entry, ...]
    # The store's revision when the range was read: a watch from revision + 1 misses nothing.
    revision: int


class EventType(enum.Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    key: str
    value: bytes  # empty for DELETE
    mod_revision: int


class CompareTarget(enum.Enum):
    VALUE = "value"
    MOD_REVISION = "mod_revision"
    VERSION = "version"  # 0 means the key does not exist


@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a transaction.

    >>> Compare.absent("models/a"), Compare.value_is("leader", b"pod-1")
    """

    key: str
    target: CompareTarget
    op: str  # "=", "!=", "<", ">"
    value: bytes | int

    @classmethod
    def absent(cls, key: str) -> Compare:
        return cls(key, CompareTarget.VERSION, "=", 0)

    @classmethod
    def exists(cls, key: str) -> Compare:
        return cls(key, CompareTarget.VERSION, ">", 0)

    @classmethod
    def value_is(cls, key: str, value: bytes) -> Compare:
        return cls(key, CompareTarget.VALUE, "=", value)

    @classmethod
    def mod_revision_is(cls, key: str, revision: int) -> Compare:
        return cls(key, CompareTarget.MOD_REVISION, "=", revision)

    def holds(self, entry: Entry | None) -> bool:
        """Evaluate against the current entry (None: absent), as etcd does."""
        actual: bytes | int
        if self.target is CompareTarget.VALUE:
            if entry is None:
                return False
            actual = entry.value
        elif self.target is CompareTarget.MOD_REVISION:
            actual = entry.mod_revision if entry is not None else 0
        else:
            actual = entry.version if entry is not None else 0
        want = self.value
        if self.op == "=":
            return actual == want
        if self.op == "!=":
            return actual != want
        if self.op == "<":
            return actual < want  # type: ignore[operator]
        if self.op == ">":
            return actual > want  # type: ignore[operator]
        raise ValueError(f"unknown comparison {self.op!r}")


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: str


Operation = Put | Delete


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int


class KeyValueStore(Protocol):
    """What the mesh needs of etcd."""

    async def get(self, key: str) -> Entry | None: ...

    async def range(self, prefix: str) -> Range:
        """Every key starting with `prefix`, sorted by key, at one revision."""
        ...

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Write; the new revision."""
        ...

    async def delete(self, key: str) -> bool:
        """Delete one key; whether it existed."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with `prefix`; how many."""
        ...

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Operation],
        failure: Sequence[Operation] = (),
    ) -> TxnResult: ...

    async def grant(self, ttl: int) -> int:
        """A new lease of `ttl` seconds; its id."""
        ...

    async def keep_alive(self, lease: int) -> int:
        """Refresh a lease; its remaining TTL. LeaseNotFound if it has expired."""
        ...

    async def revoke(self, lease: int) -> None:
        """End a lease now, deleting its keys; a lease already gone is no error."""
        ...

    def watch(self, prefix: str, start_revision: int) -> AsyncIterator[list[Event]]:
        """Batches of events under `prefix` from `start_revision` on, in revision order.

        Raises Compacted if `start_revision` is no longer in history, StoreUnavailable when the
        connection is lost; the caller resumes from the revision after the last event it saw.
        """
        ...

    async def compact(self, revision: int) -> None:
        """Drop history before `revision`."""
        ...

    async def revision(self) -> int:
        """The store's current revision."""
        ...

    async def aclose(self) -> None: ...
