"""One forward's wait on one pod (mesh.router.attempt.watched): a slow pod that answers probes is
waited on, a silent one is given up with its call cancelled, and the caller's own cancel goes
through. The pod here is a pure-logic fake: only its probe's answer matters."""

from __future__ import annotations

import asyncio

import pytest

from mesh.errors import DeadlineExceeded, ModelNotFound
from mesh.router.attempt import Liveness, PodSilent, watched

EVERY = 0.01  # the attempt timeout: the tests wait on events, not on it


class FakePod:
    """Answers probes (or, silent, fails them as a blackholed pod's time out); counts them."""

    def __init__(self, pod_id: str = "p", *, silent: bool = False, answer_after: int = 0) -> None:
        self.pod_id = pod_id
        self.silent = silent
        self.probes = 0
        # Set after `answer_after` probes answered: the call the test makes waits on it.
        self.probed_enough = asyncio.Event()
        self._answer_after = answer_after

    async def live(self, timeout: float) -> None:
        self.probes += 1
        if self.silent:
            raise DeadlineExceeded("no answer")
        if self.probes >= self._answer_after:
            self.probed_enough.set()


class Call:
    """A forward's call: returns `value` once `until` is set (never, if None); records its end."""

    def __init__(self, until: asyncio.Event | None, value: bytes = b"answer") -> None:
        self.until = until
        self.value = value
        self.cancelled = False
        self.ended = asyncio.Event()

    async def __call__(self) -> bytes:
        try:
            if self.until is None:
                await asyncio.Future()  # never answers
            else:
                await self.until.wait()
            return self.value
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        finally:
            self.ended.set()


async def test_an_answer_within_the_attempt_timeout_asks_the_pod_nothing() -> None:
    pod = FakePod()
    done = asyncio.Event()
    done.set()
    answer = await watched(Call(done)(), pod, every=60, liveness=Liveness())
    assert answer == b"answer"
    assert pod.probes == 0


async def test_a_slow_pod_that_answers_probes_is_waited_on_until_it_answers() -> None:
    pod = FakePod(answer_after=3)
    call = Call(pod.probed_enough)  # answers only after three probes
    answer = await watched(call(), pod, every=EVERY, liveness=Liveness())
    assert answer == b"answer"
    assert pod.probes >= 3
    assert not call.cancelled


async def test_a_silent_pod_is_given_up_and_its_call_cancelled() -> None:
    pod = FakePod(silent=True)
    call = Call(None)
    liveness = Liveness(remember=60)
    with pytest.raises(PodSilent) as err:
        await watched(call(), pod, every=EVERY, liveness=liveness)
    assert err.value.pod_id == "p"
    await asyncio.wait_for(call.ended.wait(), 5)
    assert call.cancelled
    assert liveness.silent("p")  # forwards prefer its peers meanwhile
    # The cancel that stopped the call was the watch's own: the caller's task is not left
    # cancelling, and goes on (to retry on another copy).
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0)


async def test_a_caller_giving_up_cancels_its_call_and_is_not_told_the_pod_is_silent() -> None:
    pod = FakePod(answer_after=2)
    call = Call(None)
    forward = asyncio.create_task(watched(call(), pod, every=EVERY, liveness=Liveness()))
    await pod.probed_enough.wait()  # the pod answers probes: the forward waits on
    assert not forward.done()
    forward.cancel()
    with pytest.raises(asyncio.CancelledError):
        await forward
    assert call.cancelled


async def test_a_caller_giving_up_on_a_silent_pod_is_cancelled_not_told_it_is_silent() -> None:
    # The caller's cancel and the watch's arrive together: the caller's wins.
    class Stuck(FakePod):
        def __init__(self) -> None:
            super().__init__(silent=True)
            self.probing = asyncio.Event()
            self.release = asyncio.Event()

        async def live(self, timeout: float) -> None:
            self.probing.set()
            await self.release.wait()
            await super().live(timeout)

    pod = Stuck()
    call = Call(None)
    forward = asyncio.create_task(watched(call(), pod, every=EVERY, liveness=Liveness()))
    await pod.probing.wait()
    pod.release.set()  # the probe fails on the next turn of the loop...
    await asyncio.sleep(0)
    forward.cancel()  # ...and the caller gives up in the same turn
    with pytest.raises(asyncio.CancelledError):
        await forward
    assert call.cancelled


async def test_the_pods_answer_reaches_the_caller_as_it_came() -> None:
    async def refuses() -> bytes:
        raise ModelNotFound("model 'm' is not loaded on this pod")

    with pytest.raises(ModelNotFound, match="not loaded"):
        await watched(refuses(), FakePod(), every=EVERY, liveness=Liveness())
