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


async def watched(call: Awaitable[T], pod: Probed, *, every: float, liveness: Liveness) -> T:
    """`call`'s result; PodSilent once it has waited `every` seconds and the pod then does not
    answer a probe. `every` <= 0: just the call. Cancelled, the call is cancelled with it."""
    if every <= 0:
        return await call
    task = asyncio.ensure_future(call)
    started = time.monotonic()
    probe: asyncio.Future[bool] | None = None
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=every)
            if done:
                return task.result()
            probe = asyncio.ensure_future(liveness.answers(pod))
            await asyncio.wait({task, probe}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():  # the answer came while the pod was probed
                return task.result()
            if not probe.result():
                raise PodSilent(pod.pod_id, time.monotonic() - started)
    finally:
        if not task.done():
            task.cancel()
        if probe is not None and not probe.done():
            probe.cancel()  # this wait's share only: the probe itself is shielded
