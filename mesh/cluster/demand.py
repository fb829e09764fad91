"""Demand for pods a pool does not have: what a router publishes while it holds requests.

A router that gets a request for a model no pod of its pool can serve (the pool is at zero, or
every pod is draining) holds the request (mesh.router.held) and publishes one record per model
it holds requests for, under its own lease:

| key under the root prefix               | record       | lifetime                      |
|-----------------------------------------|--------------|-------------------------------|
| demand/{pool}/{router_id}/{model_id}    | DemandRecord | while held, the router's lease |

A pool controller (`mesh up`'s, mesh.pool.local) reads them with one range read and sizes the
pool with them: held requests are in-flight demand (mesh.placement.pool). A router that dies
leaves no stale demand: its lease takes the records with it. Values that cannot be decoded are
skipped with a warning, as the mirror does.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass

from mesh.cluster.records import InstanceRecord
from mesh.cluster.store import KeyValueStore

log = logging.getLogger(__name__)

# The pool of a model with no `pool` label among its required labels.
DEFAULT_POOL = "default"
# The required label that names a model's pool (a pod of that pool carries it).
POOL_LABEL = "pool"


def pool_of_pod(instance: InstanceRecord) -> str:
    """The pool a pod serves: its `pool` label, else the default pool."""
    return instance.labels.get(POOL_LABEL, DEFAULT_POOL)


@dataclass(frozen=True, slots=True)
class DemandRecord:
    """Requests a router holds for a model: how many, since when, and the bytes they want."""

    pool: str
    model_id: str
    router_id: str
    held: int
    # Bytes a pod needs free for the model (its size as far as the router knows; 0: unknown).
    bytes_wanted: int
    since: float  # unix seconds: when the first of these requests was held
    version: int = 1


def demand_prefix(root: str, pool: str | None = None) -> str:
    """Every demand record under `root`, or a pool's."""
    prefix = root.rstrip("/") + "/demand/"
    return prefix if pool is None else f"{prefix}{pool}/"


def demand_key(root: str, record: DemandRecord) -> str:
    return f"{demand_prefix(root, record.pool)}{record.router_id}/{record.model_id}"


def encode_demand(record: DemandRecord) -> bytes:
    return json.dumps(asdict(record), separators=(",", ":"), sort_keys=True).encode()


def decode_demand(key: str, value: bytes) -> DemandRecord | None:
    """The record at `key`, or None (logged) when the value is not one."""
    try:
        raw = json.loads(value)
        record = DemandRecord(
            pool=str(raw["pool"]),
            model_id=str(raw["model_id"]),
            router_id=str(raw["router_id"]),
            held=int(raw["held"]),
            bytes_wanted=int(raw["bytes_wanted"]),
            since=float(raw["since"]),
        )
    except (ValueError, TypeError, KeyError) as exc:
        log.warning("demand: cannot decode %r: %s; skipped", key, exc)
        return None
    return record


async def read_demand(store: KeyValueStore, root: str) -> list[DemandRecord]:
    """Every demand record under `root`, in one range read."""
    found = await store.range(demand_prefix(root))
    records = (decode_demand(e.key, e.value) for e in found.entries)
    return [r for r in records if r is not None]
