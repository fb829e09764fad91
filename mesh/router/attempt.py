"""One forward's wait on one pod, bounded without cutting a slow pod short.

A pod whose packets are silently dropped (a blackholed route, a frozen host, a NIC gone) never
answers and never fails: its HTTP/2 connection still looks open until keepalive gives up, tens
of seconds later, and a forward to it would wait out the client's whole deadline although
another copy could answer at once. Every `attempt_timeout` seconds a forward still waiting asks
the pod whether it answers at all (`ServerLive`, within `probe_timeout`): a pod that answers is
slow, not gone, and the forward waits on (a long generation is never cut); a pod that does not
is *silent*, and the forward gives it up as UNAVAILABLE, which the router retries on another
copy. A silent pod is remembered for `remember` seconds (or until it answers again), and
forwards send to its peers first meanwhile, so one probe's wait is paid once, not per request.

One probe per pod at a time: the forwards waiting on a pod share it.

    liveness = Liveness(probe_timeout=1.0, remember=10.0)
    response = await watched(pod.infer(data), pod, every=5.0, liveness=liveness)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from mesh.errors import DeadlineExceeded, MeshError, Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
P = TypeVar("P", bound="Probed")

# A probe that ends with these did not reach a serving pod; any other answer (even an error
# such as UNIMPLEMENTED) came from a process that is there.
_SILENT = (DeadlineExceeded, Unavailable)


class Probed(Protocol):
    pod_id: str

    async def live(self, timeout: float) -> None: ...  # mesh.router.transport.PodTransport


class PodSilent(Exception):
    """The pod did not answer the forward within the attempt timeout, nor a probe after it."""

    def __init__(self, pod_id: str, waited: float) -> None:
        super().__init__(
            f"pod {pod_id} did not answer within {waited:.1f}s and does not answer probes"
        )
        self.pod_id = pod_id


class Liveness:
    def __init__(
        self,
        probe_timeout: float = 1.0,
        remember: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.probe_timeout = probe_timeout
        self.remember = remember
        self._clock = clock
        self._probes: dict[str, asyncio.Future[bool]] = {}
        self._silent: dict[str, float] = {}  # pod id -> when it was found silent

    def silent(self, pod_id: str) -> bool:
        at = self._silent.get(pod_id)
        if at is None:
            return False
        if self._clock() - at > self.remember:
            del self._silent[pod_id]
            return False
        return True

    def prefer_answering(self, copies: Sequence[P]) -> Sequence[P]:
        """The copies on pods not known to be silent, or all of them if none is."""
        if not self._silent:
            return copies
        answering = [c for c in copies if not self.silent(c.pod_id)]
        return answering or copies

    async def answers(self, pod: Probed) -> bool:
        """Whether the pod answers a probe now (one probe at a time per pod, shared)."""
        probe = self._probes.get(pod.pod_id)
        if probe is None:
            probe = asyncio.ensure_future(self._probe(pod))
            self._probes[pod.pod_id] = probe
            probe.add_done_callback(lambda _: self._probes.pop(pod.pod_id, None))
        return await asyncio.shield(probe)

    async def _probe(self, pod: Probed) -> bool:
        try:
            await pod.live(self.probe_timeout)
            alive = True
        except _SILENT:
            alive = False
        except MeshError:  # an answer, even an error, came from a process that is there
            alive = True
        if alive:
            self._silent.pop(pod.pod_id, None)
        else:
            log.warning("pod %s does not answer; forwards go to other copies", pod.pod_id)
            self._silent[pod.pod_id] = self._clock()
        return alive


class _Watch:
    """One forward's watch on its pod, armed on the forward's own task: every `every` seconds
    without an answer, a probe; a pod found silent cancels the task, which `watched` turns into
    PodSilent. A timer per forward rather than a task of its own: the call that answers within
    `every` (nearly all of them) costs one timer set and cancelled, not a task and a wait."""

    __slots__ = ("_every", "_liveness", "_loop", "_pod", "_probe", "_task", "_timer", "silent")

    def __init__(
        self, task: asyncio.Task[object], pod: Probed, liveness: Liveness, every: float
    ) -> None:
        self._task = task
        self._pod = pod
        self._liveness = liveness
        self._every = every
        self._loop = asyncio.get_running_loop()
        self._probe: asyncio.Future[bool] | None = None
        self.silent = False
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(every, self._fire)

    def _fire(self) -> None:
        self._timer = None
        probe = self._probe = asyncio.ensure_future(self._liveness.answers(self._pod))
        probe.add_done_callback(self._probed)

    def _probed(self, probe: asyncio.Future[bool]) -> None:
        if probe is not self._probe:  # closed: the call ended first
            return
        self._probe = None
        if probe.cancelled():
            return
        error = probe.exception()
        if error is not None:  # not a transport's answer (those are mesh errors): wait on
            log.warning("probing pod %s failed: %r", self._pod.pod_id, error)
        elif not probe.result():
            self.silent = True
            self._task.cancel()
            return
        self._timer = self._loop.call_later(self._every, self._fire)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.cancel()  # this wait's share only: the probe itself is shielded


async def watched(call: Awaitable[T], pod: Probed, *, every: float, liveness: Liveness) -> T:
    """`call`'s result; PodSilent once it has waited `every` seconds and the pod then does not
    answer a probe. `every` <= 0: just the call. Cancelled, the call is cancelled with it (it
    runs on the caller's task)."""
    if every <= 0:
        return await call
    task = asyncio.current_task()
    assert task is not None  # a coroutine of the router's handlers
    started = time.monotonic()
    watch = _Watch(task, pod, liveness, every)
    try:
        return await call
    except asyncio.CancelledError:
        # The watch's own cancel (and no one else's) is the pod found silent.
        if watch.silent:
            watch.silent = False
            if task.uncancel() == 0:
                raise PodSilent(pod.pod_id, time.monotonic() - started) from None
        raise
    finally:
        watch.close()
        if watch.silent:  # the call swallowed the watch's cancel: take it back
            task.uncancel()
