"""The router's miss path: a single-flight loader that gets a copy of a model loaded.

1. single-flight in this router: concurrent misses for a model share one attempt
   (`ensure_loaded`); each caller waits within its own deadline, the load itself runs for the
   longer of the first caller's deadline and the load timeout;
2. the placement engine chooses a pod from the copy view's snapshot of the mirror;
3. the load is claimed (mesh.cluster.claims): one load per mesh. A router that loses the claim
   waits on the mirror for the copy another router is loading;
4. the chosen pod is told to load (`PodTransport.load` with the storage reference, for its
   puller); a failed load is remembered (`FailureLog`) and the next pod tried, a bounded number
   of times, then ModelLoadFailed with the load's error.

`add_copy` loads one more copy on a pod outside an exclude list (the leader's jobs, a forward
whose shared load went to a pod it had excluded). What a copy measured is written back into the
model's registration, so that it outlives the copy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Sequence
from typing import Any

from mesh.cluster.claims import LoadClaims
from mesh.cluster.codec import Keys, decode, encode, legacy_encoding
from mesh.cluster.mirror import Mirror
from mesh.cluster.records import ModelRecord, size_key
from mesh.cluster.store import Compare, KeyValueStore, Put
from mesh.errors import (
    DeadlineExceeded,
    MeshError,
    ModelLoadFailed,
    ModelNotFound,
    PodUnreachable,
    StoreUnavailable,
    Unavailable,
)
from mesh.placement.choose import Decision, NoPod, Placement, choose_pod
from mesh.placement.failures import FailureLog, ModelFailures
from mesh.placement.snapshot import ModelRequirements, Snapshot, TypicalSizes
from mesh.router.copies import CopyView
from mesh.router.metrics import RouterMetrics
from mesh.router.overview import Activity
from mesh.router.pods import PodPool
from mesh.router.policy import RouterPolicy
from mesh.router.transport import Loaded, LoadRequest

log = logging.getLogger(__name__)

# LoadModel's option naming an adapter's base, for the pod (mesh.pod.dataplane).
BASE_OPTION = "adapter.base"


def _spec(record: ModelRecord) -> str:
    """The registration a failure is about, as a message names it."""
    return f"{record.format} from {record.storage}"


class Loader:
    def __init__(
        self,
        store: KeyValueStore,
        mirror: Mirror,
        keys: Keys,
        pool: PodPool,
        copies: CopyView,
        claims: LoadClaims,
        failures: FailureLog,
        activity: Activity,
        policy: RouterPolicy,
        rng: random.Random,
        metrics: RouterMetrics | None,
    ) -> None:
        self._store = store
        self.mirror = mirror
        self._keys = keys
        self._pool = pool
        self.copies = copies
        self.claims = claims
        self.failures = failures
        self.activity = activity
        self.policy = policy
        self._rng = rng
        self._metrics = metrics
        self._typical: TypicalSizes | None = None
        self._loads: dict[str, asyncio.Future[str]] = {}
        self._size_writes: set[asyncio.Task[None]] = set()
        self.loads_started = 0

    def observe_model(self, previous: ModelRecord | None, record: ModelRecord | None) -> None:
        """A registration changed (the mirror's subscriber): keep the per-format sizes."""
        if self._typical is not None:
            self._typical.update(previous, record)

    def _placement_view(self, model_id: str, record: ModelRecord) -> Snapshot:
        """The snapshot a miss decides from, in time that grows with the copies placed, not
        with the models registered: the records of the models that have placements (so that
        copies loading elsewhere are charged their own size, not the default) and this one's,
        with the per-format estimates kept up to date from the mirror's changes."""
        placements = self.mirror.placements
        models = self.mirror.models
        records = [models[m] for m in placements if m in models]
        if model_id not in placements:
            records.append(record)
        return self.copies.snapshot(records, typical=self._typical_sizes().sizes())

    def _typical_sizes(self) -> TypicalSizes:
        if self._typical is None:  # once; then the mirror's changes keep it (observe)
            self._typical = TypicalSizes(self.mirror.models.values())
        return self._typical

    async def ensure_loaded(
        self,
        model_id: str,
        exclude: Sequence[str] = (),
        deadline: float | None = None,
        *,
        stale: Sequence[str] = (),
    ) -> str:
        """A pod holding a loaded copy of `model_id`, loading one if there is none. `stale`:
        pods that answered they hold none although the mirror shows a copy; a load may go
        there when no other pod can take it."""
        deadline = deadline or time.monotonic() + self.policy.load_timeout
        copies = self.copies.holders(model_id, [*exclude, *stale])
        if copies:
            return copies[0].pod_id
        future = self._loads.get(model_id)
        if future is None:
            self.activity.miss(model_id, time.time())
            if self._metrics is not None:
                miss = self._metrics.miss
                started = time.perf_counter()
            else:
                miss = None
            future = asyncio.get_running_loop().create_future()
            self._loads[model_id] = future
            # The load is shared: the first caller's deadline bounds only that caller's wait.
            # A caller that gives up must not cut the load others wait for (or the copy the
            # next request would find): it runs for the longer of that and the load timeout.
            load_deadline = max(deadline, time.monotonic() + self.policy.load_timeout)
            task = asyncio.create_task(
                self._load(model_id, list(exclude), load_deadline, stale=tuple(stale))
            )
            task.add_done_callback(lambda t: self._settle(model_id, future, t))
            if miss is not None:
                task.add_done_callback(lambda t: miss.observe(time.perf_counter() - started))
        remaining = deadline - time.monotonic()
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(remaining, 0.001))
        except TimeoutError:
            raise DeadlineExceeded(
                f"model {model_id!r} was not loaded within the deadline"
            ) from None

    def _settle(self, model_id: str, future: asyncio.Future[str], task: asyncio.Task[str]) -> None:
        self._loads.pop(model_id, None)
        if future.done():
            return
        if task.cancelled():
            future.set_exception(Unavailable(f"load of {model_id!r} was cancelled"))
        elif task.exception() is not None:
            future.set_exception(task.exception())  # type: ignore[arg-type]
        else:
            future.set_result(task.result())
            return
        future.exception()  # marks it retrieved: callers that gave up need no warning

    async def add_copy_for(self, model_id: str, exclude: Sequence[str], deadline: float) -> str:
        """A loaded copy on a pod outside `exclude`, loading one if needed, by `deadline`."""
        copies = self.copies.holders(model_id, exclude)
        if copies:
            return copies[0].pod_id
        if self.copies.loading_elsewhere(model_id, exclude):
            # A copy on its way to a pod outside `exclude` (another router's load, under
            # churn) is the copy wanted: wait for it, where a new one would find that pod
            # already holding the model and no other to go to.
            try:
                await self.mirror.wait_for(
                    lambda m: (
                        bool(self.copies.holders(model_id, exclude))
                        or not self.copies.loading_elsewhere(model_id, exclude)
                    ),
                    timeout=max(deadline - time.monotonic(), 0.001),
                )
            except TimeoutError:
                raise DeadlineExceeded(
                    f"model {model_id!r} was not loaded within the deadline"
                ) from None
            copies = self.copies.holders(model_id, exclude)
            if copies:
                return copies[0].pod_id
        return await self._load(model_id, list(exclude), deadline, new_copy=True)

    async def add_copy(self, model_id: str, exclude: Sequence[str]) -> str:
        """Load another copy on a pod not in `exclude` (those holding one already)."""
        deadline = time.monotonic() + self.policy.load_timeout
        return await self._load(model_id, list(exclude), deadline, new_copy=True)

    async def _load(
        self,
        model_id: str,
        exclude: list[str],
        deadline: float,
        new_copy: bool = False,
        stale: Sequence[str] = (),
    ) -> str:
        record = self.mirror.models.get(model_id)
        if record is None:
            raise ModelNotFound(f"model {model_id!r} is not registered in this mesh")
        last_error = ""
        reached = False  # whether a pod tried answered at all (else the miss is Unavailable)
        waited = False
        # Pods that said they hold no copy, to this request or another, are stale too.
        stale = [*stale, *(p for p in self.copies.disbelieved(model_id) if p not in stale)]
        for _ in range(self.policy.load_attempts):
            copies = self.copies.holders(model_id, [*exclude, *stale])
            if copies and not new_copy:
                return copies[0].pod_id
            if not new_copy and self.copies.loading_elsewhere(model_id, exclude):
                # One load per mesh: wait for the copy on its way rather than start another.
                pod_id = await self._wait_for_other(model_id, deadline)
                if pod_id:
                    return pod_id
                continue
            now = time.time()
            snapshot = self._placement_view(model_id, record)
            requirements = snapshot.requirements(model_id)
            assert requirements is not None
            measured = max((p.size for p in self.mirror.placements.get(model_id, {}).values()),
                           default=0)  # fmt: skip
            if not record.size_estimate and measured:
                # What a copy measured on a pod beats the default guess.
                requirements = dataclasses.replace(requirements, size=measured)
            failures = self.failures.for_model(model_id, now)
            # Pods a load of this model could not reach just now are passed over, as the pods
            # this request tried are.
            missed = failures.missed if failures is not None else ()
            passed_over = [*exclude, *(f.pod_id for f in missed if f.pod_id not in exclude)]
            decision = self._choose_pod(
                snapshot, requirements, now, passed_over, stale, failures
            )  # fmt: skip
            if (
                isinstance(decision, NoPod)
                and not (record.size_estimate or record.measured_size or measured)
                and not (failures is not None and failures.failures)
            ):
                # The size is a guess (nothing of the model measured, nothing given): a pod too
                # small or too full for the guess may well take the model, evicting what it
                # must by its own estimate (file size times its learned factor). Let it judge.
                requirements = dataclasses.replace(requirements, size=1)
                decision = self._choose_pod(
                    snapshot, requirements, now, passed_over, stale, failures
                )
            if isinstance(decision, NoPod) and not waited and not self.mirror.instances:
                # No pod at all (their leases expired while etcd was away, or the mesh is
                # starting): wait for one to register rather than fail at once.
                waited = True
                appeared = await self._wait_for_pods(exclude, deadline)
                if appeared:
                    exclude[:] = [p for p in exclude if p not in appeared]
                    continue
            if isinstance(decision, NoPod):
                if not reached and last_error:
                    raise self._unreachable(model_id, record, last_error)  # none answered
                if (
                    not reached
                    and missed
                    and isinstance(
                        self._choose_pod(snapshot, requirements, now, exclude, stale, failures),
                        Placement,
                    )
                ):
                    # Only the pods passed over, not reached just before, could take it.
                    raise self._unreachable(model_id, record, missed[-1].error)
                raise ModelLoadFailed(
                    f"model {model_id!r} ({_spec(record)}): no pod can load it: "
                    f"{decision.reason}" + (f"; last error: {last_error}" if last_error else "")
                )
            pod_id = decision.pod_id
            if record.base:
                # An adapter goes where its base is: onto a pod holding it, least busy first,
                # or where the base is loaded now.
                pod_id = await self._base_pod(record.base, exclude, deadline)
            claimed = await self._claim(model_id, pod_id, requirements.size)
            if not claimed:
                pod_id = await self._wait_for_other(model_id, deadline)
                if pod_id:
                    return pod_id
                continue  # the other router's load failed or its claim expired: try again
            try:
                loaded = await self._tell_pod_to_load(pod_id, record, deadline)
                self.failures.clear(model_id)
                self.copies.loaded_here(model_id, pod_id)
                self._remember_size(model_id, loaded, pod_id)
                return pod_id
            except (ModelLoadFailed, Unavailable) as exc:
                # Any UNAVAILABLE leaves the client's retry to it (its storage may be back by
                # then), but only a pod that said nothing is no failure of the model.
                reached = reached or not isinstance(exc, Unavailable)
                last_error = str(exc)
                self.failures.record(
                    model_id, pod_id, time.time(), last_error,
                    unreachable=isinstance(exc, PodUnreachable),
                )  # fmt: skip
                exclude.append(pod_id)
            finally:
                await self.claims.release(model_id, pod_id, claimed)
        if not last_error:  # every round found another router's load of it, which did not end
            raise Unavailable(
                f"model {model_id!r} ({_spec(record)}) is not loaded: another router's load of "
                "it did not finish; try again"
            )
        if not reached:
            raise self._unreachable(model_id, record, last_error)
        raise ModelLoadFailed(f"model {model_id!r} ({_spec(record)}) failed to load: {last_error}")

    @staticmethod
    def _unreachable(model_id: str, record: ModelRecord, last_error: str) -> Unavailable:
        """Every pod tried was unavailable (unreachable, draining): no load failed, and the
        client may retry."""
        return Unavailable(
            f"model {model_id!r} ({_spec(record)}) is not loaded: no pod could be reached to "
            f"load it; last error: {last_error}"
        )

    def _choose_pod(
        self,
        snapshot: Snapshot,
        requirements: ModelRequirements,
        now: float,
        exclude: Sequence[str],
        stale: Sequence[str],
        failures: ModelFailures | None,
    ) -> Decision:
        """The pod for a load: one outside `exclude` and `stale` (pods that just answered
        NOT_FOUND, having evicted the model), else one of the stale ones after all, which
        hold no copy whatever their records say (in a one-pod mesh, the only place to go)."""
        decision = choose_pod(
            snapshot, requirements, now, self._rng, exclude=[*exclude, *stale], failures=failures
        )
        if isinstance(decision, NoPod) and stale:
            decision = choose_pod(
                snapshot.without_copies(requirements.model_id, stale), requirements, now,
                self._rng, exclude=exclude, failures=failures,
            )  # fmt: skip
        return decision

    async def _base_pod(self, base: str, exclude: list[str], deadline: float) -> str:
        holders = self.copies.holders(base, exclude)
        if holders:
            return min(holders, key=lambda p: p.outstanding).pod_id
        return await self.ensure_loaded(base, exclude, deadline)

    async def _wait_for_pods(self, exclude: Sequence[str], deadline: float) -> set[str]:
        """Pods that registered (anew) within the grace and the deadline; empty if none did."""
        before = set(self.mirror.instances)
        wait = min(deadline - time.monotonic(), self.policy.vanished_grace)
        if wait <= 0:
            return set()

        def appeared(m: Mirror) -> set[str]:
            fresh = set(m.instances) - before
            # A pod excluded by this request that re-registered counts: its lease came back.
            return fresh | {p for p in exclude if p in m.instances and p not in before}

        log.info("no pod can take a load now; waiting up to %.1fs for pods to register", wait)
        try:
            await self.mirror.wait_for(lambda m: bool(appeared(m)), timeout=wait)
        except TimeoutError:
            return set()
        return appeared(self.mirror)

    async def _claim(self, model_id: str, pod_id: str, size: int) -> int:
        """The claim's revision, or 0 if another router holds it (mesh.cluster.claims)."""
        try:
            return await self.claims.claim(model_id, pod_id, size)
        except StoreUnavailable as exc:
            raise Unavailable(
                f"model {model_id!r} is not loaded and etcd is unreachable: {exc}"
            ) from exc

    async def _wait_for_other(self, model_id: str, deadline: float) -> str:
        """Another router claimed the load: the pod holding a copy once loaded, or "" if the
        claim went away without one."""
        return await self.claims.wait_for_other(
            self.mirror,
            model_id,
            ready=lambda: self.copies.first_holder(model_id),
            loading=lambda: self.copies.loading_elsewhere(model_id),
            deadline=deadline,
            check_every=self.policy.claim_check,
        )

    def _remember_size(self, model_id: str, loaded: Loaded, pod_id: str) -> None:
        """Write what the copy measured into the model's registration, for its runtime and the
        kind of device of `pod_id` (once, or when it moved by more than a quarter), so that it
        outlives the copy: evicted and asked for again, the model is placed by its size on
        each kind of pod, not the default. The files' size on disk is written once, for the
        estimate of a copy of the same files on a kind of pod none measured."""
        size = loaded.size
        record = self.mirror.models.get(model_id)
        instance = self.copies.instance(pod_id)
        if record is None or size <= 0:
            return
        key = size_key(record.format, instance.device if instance is not None else "")
        known = record.measured_sizes.get(key, 0)
        artifact = record.artifact_bytes or loaded.artifact_bytes
        if (
            known
            and abs(size - known) <= known / 4
            and record.measured_size
            and artifact == record.artifact_bytes
        ):
            return
        task = asyncio.create_task(self._write_size(record, size, key, artifact))
        self._size_writes.add(task)
        task.add_done_callback(self._size_writes.discard)

    async def _write_size(
        self, record: ModelRecord, size: int, size_at: str, artifact_bytes: int
    ) -> None:
        key = self._keys.model(record.model_id)
        updated = dataclasses.replace(
            record,
            measured_size=(
                record.measured_size
                if record.measured_size and abs(size - record.measured_size) <= size / 4
                else size
            ),
            measured_sizes={**record.measured_sizes, size_at: size},
            artifact_bytes=artifact_bytes,
        )
        try:
            # Only over the registration as it was: a re-registration meanwhile wins. A record
            # stored before StorageRef is compared as it was written (and written anew).
            current = encode(record)
            for stored in dict.fromkeys((current, legacy_encoding(record))):
                done = await self._store.txn(
                    [Compare.value_is(key, stored)], [Put(key, encode(updated))]
                )
                if done.succeeded:
                    return
            # An old record whose options spell the puller's otherwise (as the client gave
            # them: "storage.unpack": "Auto"): over its revision, if it is still this one.
            entry = await self._store.get(key)
            if entry is not None and decode(ModelRecord, key, entry.value) == record:
                await self._store.txn(
                    [Compare.mod_revision_is(key, entry.mod_revision)],
                    [Put(key, encode(updated))],
                )
        except MeshError as exc:
            log.info("could not record the size of %s: %s", record.model_id, exc)

    async def _tell_pod_to_load(self, pod_id: str, record: Any, deadline: float) -> Loaded:
        instance = self.mirror.instances.get(pod_id)
        if instance is None:
            raise PodUnreachable(f"pod {pod_id} left the mesh")
        pod = self._pool.client(pod_id, instance.address, instance.data_address)
        request = LoadRequest(
            model_id=record.model_id,
            format=record.format,
            storage=record.storage,
            options={**record.options, **({BASE_OPTION: record.base} if record.base else {})},
        )
        self.loads_started += 1
        outcome = "failed"
        try:
            loaded = await pod.load(request, timeout=max(deadline - time.monotonic(), 0.001))
            outcome = "loaded"
            return loaded
        except DeadlineExceeded:
            raise DeadlineExceeded(
                f"model {record.model_id!r}: load on {pod_id} outlived the deadline"
            ) from None
        except PodUnreachable as exc:
            raise PodUnreachable(f"{pod_id}: {exc}") from None
        except Unavailable as exc:
            raise Unavailable(f"{pod_id}: {exc}") from None
        except MeshError as exc:
            raise ModelLoadFailed(f"{pod_id}: {exc}") from None
        finally:
            if self._metrics is not None:
                self._metrics.loads.labels(outcome).inc()
