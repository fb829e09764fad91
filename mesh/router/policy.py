"""The router's policy: attempts, timeouts and the failure record's bounds (RouterSettings sets
them, mesh.router.server builds it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RouterPolicy:
    forward_attempts: int = 3
    load_attempts: int = 3
    # Longest a miss may take when the client sets no deadline.
    load_timeout: float = 120.0
    # How often a router waiting on another's claim checks that the claim still stands.
    claim_check: float = 1.0
    # How long a pod whose records vanished (its lease expired while etcd was away) is still
    # sent requests for the models it held, and how long a miss that finds no pod at all
    # waits for one to register (mesh.router.vanished); about one lease TTL.
    vanished_grace: float = 10.0
    # Failed loads: how long each is remembered, and how many within that time stop a model
    # from being tried again until one expires (or its registration changes, or a retry).
    failure_ttl: float = 900.0
    failure_attempts: int = 3
    # A forward still waiting on a pod after attempt_timeout seconds asks it ServerLive
    # (within probe_timeout): one that does not answer is given up for another copy
    # (mesh.router.attempt); 0: wait on the pod until the deadline.
    attempt_timeout: float = 5.0
    probe_timeout: float = 1.0
