"""The router's forward, with its retries: a request's bytes to a copy of its model.

`infer` forwards one ModelInfer request ("model id + the request's bytes": nothing is decoded)
to a copy the copy view names (power of two choices among the holders), loading one through the
single-flight loader on a miss. A pod answering NOT_FOUND or UNAVAILABLE (`ModelNotFound`,
`ModelNotReady`, `Unavailable`: a stale mirror, a dead pod) is excluded and the request retried
on another copy or a fresh placement, at most `forward_attempts` times; any other answer reaches
the client unchanged. `stream` does the same for one ModelStreamInfer request, retrying only
before the first response has gone to the client. `forward` is one attempt on one pod. Every
wait is bounded by the client's deadline. The requests per model and those in flight are
counted here, for copy scaling (mesh.router.background).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import AsyncIterator, Sequence

from mesh.errors import DeadlineExceeded, MeshError, ModelNotFound, ModelNotReady, Unavailable
from mesh.router.attempt import Liveness, PodSilent, watched
from mesh.router.copies import CopyView
from mesh.router.held import HeldRequests
from mesh.router.loader import Loader
from mesh.router.metrics import RouterMetrics
from mesh.router.pods import PodPool
from mesh.router.policy import RouterPolicy
from mesh.router.transport import PodTransport

log = logging.getLogger(__name__)

# A pod's answers that another copy may not give: it does not hold the model (any more), or it
# cannot serve now (draining, unloading, gone).
_RETRYABLE = (ModelNotFound, ModelNotReady, Unavailable)


def _retry_reason(exc: MeshError | type[MeshError]) -> str:
    """The label of a retry in the metrics: the status the pod's answer stands for."""
    cls = exc if isinstance(exc, type) else type(exc)
    return "NOT_FOUND" if issubclass(cls, ModelNotFound) else "UNAVAILABLE"


class Forwarder:
    def __init__(
        self,
        pool: PodPool,
        copies: CopyView,
        loader: Loader,
        policy: RouterPolicy,
        metrics: RouterMetrics | None,
        held: HeldRequests | None = None,
    ) -> None:
        self._pool = pool
        # Scale from zero (mesh.router.held): a miss for a pool with no pod waits there.
        self._held = held
        self._copies = copies
        self._loader = loader
        self.policy = policy
        self._metrics = metrics
        self.requests: collections.Counter[str] = collections.Counter()
        self.in_flight: collections.Counter[str] = collections.Counter()
        # Which pods answer (the attempt timeout's probes): forwards prefer those that do.
        self.liveness = Liveness(policy.probe_timeout, remember=policy.vanished_grace)

    async def infer(self, data: bytes, model_id: str, timeout: float | None) -> bytes:
        """Forward one request to a copy, retrying elsewhere on a retryable answer (one frame
        with the attempts loop: this is the hit path)."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.policy.load_timeout)
        self.requests[model_id] += 1
        self.in_flight[model_id] += 1
        try:
            exclude: list[str] = []
            # Pods that answered NOT_FOUND: no copy there, whatever the mirror says, but they
            # may load one (in a one-pod mesh, the only place it can go).
            stale: list[str] = []
            last: MeshError | None = None
            attempts = 0
            # A pod's first NOT_FOUND costs no attempt: it did no work and only said the mirror
            # was behind (under churn several copies can be evicted under one request); a pod
            # answering it twice is excluded, so the loop stays bounded by the pods.
            while attempts < self.policy.forward_attempts:
                copies = self._copies.holders(model_id, [*exclude, *stale])
                if copies:
                    pod = self._pool.pick(self.liveness.prefer_answering(copies))
                else:
                    found = await self._copy(model_id, exclude, deadline, stale)
                    if found is None:
                        attempts += 1
                        continue
                    pod = found
                try:
                    if self._held is None or not self._held.count:
                        return await self.forward(pod, data, model_id, deadline)
                    response = await self.forward(pod, data, model_id, deadline)
                    self._held.answered()
                    return response
                except _RETRYABLE as answer:
                    reason = _retry_reason(answer)
                    if not (isinstance(answer, ModelNotFound) and pod.pod_id not in stale):
                        attempts += 1
                    if isinstance(answer, ModelNotFound):
                        self._not_here(model_id, pod.pod_id, exclude, stale)
                    else:
                        self._copies.unreachable(pod.pod_id)
                        exclude.append(pod.pod_id)
                    if self._metrics is not None:
                        self._metrics.retries.labels(reason).inc()
                    log.info(
                        "pod %s answered %s for %s; trying another copy",
                        pod.pod_id, reason, model_id,
                    )  # fmt: skip
                    last = answer
            if last is not None:
                raise last
            raise Unavailable(f"model {model_id!r}: no copy answered")
        finally:
            if self._held is not None and self._held.count:
                self._held.finish()
            self.in_flight[model_id] -= 1
            if not self.in_flight[model_id]:
                del self.in_flight[model_id]

    async def stream(
        self, data: bytes, model_id: str, timeout: float | None
    ) -> AsyncIterator[bytes]:
        """One ModelStreamInfer request, forwarded to a copy: the pod's responses as they come.

        The miss path is ModelInfer's (single-flight, claim, placement, load). A pod that
        answers the request's first response with NOT_FOUND or UNAVAILABLE (as `mesh_status`)
        is retried on another copy; once a response has gone to the client, nothing is retried.
        Closing the iterator (the client went away) cancels the pod's call, which stops its
        generation; the client's deadline goes with the call.
        """
        deadline = time.monotonic() + (timeout if timeout is not None else self.policy.load_timeout)
        self.requests[model_id] += 1
        self.in_flight[model_id] += 1
        try:
            exclude: list[str] = []
            stale: list[str] = []  # as in infer
            for attempt in range(self.policy.forward_attempts):
                pod = await self._copy(model_id, exclude, deadline, stale)
                if pod is None:
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeadlineExceeded(f"model {model_id!r}: deadline passed before forwarding")
                pod.outstanding += 1
                call = pod.stream(data, model_id, remaining)
                try:
                    try:
                        try:
                            first = await watched(
                                call.read(), pod, every=self.policy.attempt_timeout,
                                liveness=self.liveness,
                            )  # fmt: skip
                        except PodSilent as exc:
                            raise Unavailable(str(exc)) from None
                    except _RETRYABLE as exc:
                        if attempt + 1 >= self.policy.forward_attempts:
                            raise
                        if isinstance(exc, ModelNotFound):
                            self._not_here(model_id, pod.pod_id, exclude, stale)
                        else:
                            self._copies.unreachable(pod.pod_id)
                            exclude.append(pod.pod_id)
                        continue
                    if first is None:
                        raise Unavailable(f"pod {pod.pod_id} ended the stream without an answer")
                    error = pod.stream_error(first)
                    if (
                        error is not None
                        and issubclass(error, _RETRYABLE)
                        and attempt + 1 < self.policy.forward_attempts
                    ):
                        if issubclass(error, ModelNotFound):
                            self._not_here(model_id, pod.pod_id, exclude, stale)
                        else:
                            exclude.append(pod.pod_id)
                        continue
                    if self._held is not None and self._held.count:
                        self._held.answered()
                    yield first
                    while (message := await call.read()) is not None:
                        yield message
                    return
                finally:
                    pod.outstanding -= 1
                    call.cancel()
            raise Unavailable(f"model {model_id!r}: no copy answered")
        finally:
            if self._held is not None and self._held.count:
                self._held.finish()
            self.in_flight[model_id] -= 1
            if not self.in_flight[model_id]:
                del self.in_flight[model_id]

    async def _copy(
        self, model_id: str, exclude: list[str], deadline: float, stale: Sequence[str] = ()
    ) -> PodTransport | None:
        """A copy to send to, loading one on a miss; None when its pod left (try again)."""
        copies = self._copies.holders(model_id, [*exclude, *stale])
        if copies:
            return self._pool.pick(self.liveness.prefer_answering(copies))
        if self._held is not None:
            await self._held.wait_for_pod(model_id, deadline)
        pod_id = await self._loader.ensure_loaded(model_id, exclude, deadline, stale=stale)
        if pod_id in exclude:
            pod_id = await self._loader.add_copy_for(model_id, exclude, deadline)
        instance = self._copies.instance(pod_id)
        if instance is None:
            exclude.append(pod_id)
            return None
        return self._pool.client(pod_id, instance.address, instance.data_address)

    def _not_here(self, model_id: str, pod_id: str, exclude: list[str], stale: list[str]) -> None:
        """`pod_id` answered NOT_FOUND for `model_id` (evicted since the mirror showed it): the
        request may load it there again, but a pod that says so twice is tried no more."""
        self._copies.not_here(model_id, pod_id)
        (exclude if pod_id in stale else stale).append(pod_id)

    async def forward(
        self, pod: PodTransport, data: bytes, model_id: str, deadline: float
    ) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(f"model {model_id!r}: deadline passed before forwarding")
        pod.outstanding += 1
        started = time.perf_counter()
        try:
            # A pod's answer is raised as its mesh error, to pass on or retry (_infer); a pod
            # that left during the call is Unavailable (mesh.router.transport).
            if pod.can_fall_silent:
                try:
                    # A pod that does not answer, nor a probe after --attempt-timeout, is left
                    # for another copy (mesh.router.attempt).
                    response = await watched(
                        pod.infer(data, model_id, remaining), pod,
                        every=self.policy.attempt_timeout, liveness=self.liveness,
                    )  # fmt: skip
                except PodSilent as exc:
                    raise Unavailable(str(exc)) from None
            else:  # the pod in this process (mesh serve): its call is slow or answers
                response = await pod.infer(data, model_id, remaining)
            if self._metrics is not None:
                self._metrics.forward.observe(time.perf_counter() - started)
            return response
        finally:
            pod.outstanding -= 1
