"""Failed loads, remembered for a while so that placement stops sending a model where it failed.

A failed load is recorded per (model, pod) with its time and error. While a record stands (15
minutes by default), placement avoids that pod for that model; once a model has failed
`max_attempts` times within that window, on whatever pods, placement stops trying it at all
until the oldest record expires, and says why (the errors, and when a retry is allowed).

A load that reached no pod (unreachable, draining: `unreachable=True`) says nothing about the
model: it is remembered for `unreachable_ttl` seconds only, so that the misses meanwhile do not
each try that pod again, and it counts toward no attempt (`attempts`, `exhausted`, `pods`).

`FailureLog` is a small mutable store whose every method takes `now` (it reads no clock);
`for_model` hands placement a frozen `ModelFailures`, so a decision stays a pure function of
what it is given. Nothing here raises.

>>> log = FailureLog(FailurePolicy(ttl=900.0, max_attempts=2))
>>> log.record("m", "pod-a", now=100.0, error="bad weights")
>>> sorted(log.for_model("m", now=200.0).pods)
['pod-a']
>>> log.for_model("m", now=1001.0) is None  # expired
True
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mesh.cluster.records import PlacementRecord, PlacementState


@dataclass(frozen=True, slots=True)
class FailurePolicy:
    # Seconds a failure is remembered; also the window within which attempts are counted.
    ttl: float = 900.0
    # Failed attempts per model within `ttl`, across all pods, after which placement gives up.
    max_attempts: int = 3
    # Seconds a pod that could not be reached for a load is passed over for that model.
    unreachable_ttl: float = 10.0


@dataclass(frozen=True, slots=True)
class LoadFailure:
    model_id: str
    pod_id: str
    at: float
    error: str = ""
    unreachable: bool = False  # the pod was not reached: the model is not at fault


@dataclass(frozen=True, slots=True)
class ModelFailures:
    """A model's unexpired failures, oldest first, as placement reads them."""

    model_id: str
    failures: tuple[LoadFailure, ...]  # the loads that failed on a pod reached, oldest first
    policy: FailurePolicy
    missed: tuple[LoadFailure, ...] = ()  # the pods not reached, within `unreachable_ttl`

    @property
    def pods(self) -> frozenset[str]:
        """Pods where the model failed within the window: placement avoids them."""
        return frozenset(f.pod_id for f in self.failures)

    @property
    def unreachable(self) -> frozenset[str]:
        """Pods a load of the model could not reach just now: passed over for a while."""
        return frozenset(f.pod_id for f in self.missed)

    @property
    def attempts(self) -> int:
        return len(self.failures)

    @property
    def exhausted(self) -> bool:
        """Whether the model failed too often to be tried again yet."""
        return len(self.failures) >= self.policy.max_attempts

    @property
    def retry_at(self) -> float:
        """When enough records will have expired for one more attempt."""
        surplus = len(self.failures) - self.policy.max_attempts
        if surplus < 0:
            return 0.0
        return self.failures[surplus].at + self.policy.ttl

    def describe(self, now: float) -> str:
        errors = "; ".join(
            f"{f.pod_id} {now - f.at:.0f}s ago: {f.error or 'no error given'}"
            for f in self.failures
        )
        text = f"model {self.model_id!r} failed to load {self.attempts} times ({errors})"
        if self.exhausted:
            text += (
                f"; at most {self.policy.max_attempts} attempts within {self.policy.ttl:g}s, "
                f"next attempt in {max(0.0, self.retry_at - now):.0f}s"
            )
        return text


class FailureLog:
    """Failed loads per model, each expiring `policy.ttl` seconds after it happened.

    >>> log = FailureLog()
    >>> log.record("m", "pod-a", now=0.0)
    >>> log.for_model("m", now=1.0).attempts
    1
    >>> log.clear("m")  # it loaded somewhere: forget its failures
    """

    def __init__(self, policy: FailurePolicy | None = None) -> None:
        self.policy = policy or FailurePolicy()
        # Per model, oldest first: records are appended in time order.
        self._by_model: dict[str, list[LoadFailure]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_model.values())

    def record(
        self, model_id: str, pod_id: str, now: float, error: str = "", unreachable: bool = False
    ) -> None:
        records = self._by_model.setdefault(model_id, [])
        # Records arrive out of order only from a replayed mirror; keep them sorted regardless.
        records.append(LoadFailure(model_id, pod_id, now, error, unreachable))
        if len(records) > 1 and records[-2].at > now:
            records.sort(key=lambda f: f.at)

    def clear(self, model_id: str) -> None:
        """Forget a model's failures: it loaded, or an operator asked for a retry."""
        self._by_model.pop(model_id, None)

    def for_model(self, model_id: str, now: float) -> ModelFailures | None:
        """The model's failures within the window, or None if it has none."""
        records = self._by_model.get(model_id)
        if records is None:
            return None
        self._drop_expired(model_id, records, now)
        if not records:
            return None
        failed = tuple(f for f in records if not f.unreachable)
        missed = tuple(f for f in records if f.unreachable)
        return ModelFailures(model_id, failed, self.policy, missed)

    def expire(self, now: float) -> int:
        """Drop every expired record; returns how many went. Lookups also expire lazily."""
        before = len(self)
        for model_id, records in list(self._by_model.items()):
            self._drop_expired(model_id, records, now)
        return before - len(self)

    def _drop_expired(self, model_id: str, records: list[LoadFailure], now: float) -> None:
        cutoff = now - self.policy.ttl
        keep = 0
        while keep < len(records) and records[keep].at <= cutoff:
            keep += 1
        if keep:
            del records[:keep]
        missed_cutoff = now - self.policy.unreachable_ttl
        if any(f.unreachable and f.at <= missed_cutoff for f in records):
            records[:] = [f for f in records if not (f.unreachable and f.at <= missed_cutoff)]
        if not records:
            del self._by_model[model_id]

    @classmethod
    def from_records(
        cls, placements: Iterable[PlacementRecord], policy: FailurePolicy | None = None
    ) -> FailureLog:
        """The failures that failed placement records in the store describe."""
        log = cls(policy)
        for p in sorted(placements, key=lambda p: p.since):
            if p.state is PlacementState.FAILED:
                log.record(p.model_id, p.pod_id, p.since, p.error)
        return log
