"""The router's clients of its pods, pooled one per pod, and the least-busy choice among copies.

A client (mesh.router.transport.PodTransport) is made on first use by the pool's `connect`
(mesh.router.grpcpods.GrpcPods: one gRPC channel per pod) and closed when the pod leaves the
mirror or moves to another address. The router counts its own requests outstanding to each pod
and picks among a model's copies by the power of two choices: two at random, the less busy one
wins, which spreads load almost as well as a global minimum without its herding.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence

from mesh.router.transport import Connect, LocalInfer, PodTransport

log = logging.getLogger(__name__)


class PodPool:
    def __init__(self, connect: Connect, rng: random.Random | None = None) -> None:
        self._clients: dict[str, PodTransport] = {}
        self._connect = connect
        self._rng = rng or random.Random()
        self._closing: set[asyncio.Task[None]] = set()
        self._local: dict[str, LocalInfer] = {}

    def serve_in_process(self, pod_id: str, infer: LocalInfer) -> None:
        """Pod `pod_id` runs in this process: forward its inference to `infer`."""
        self._local[pod_id] = infer
        self.forget(pod_id)

    def client(self, pod_id: str, address: str, data_address: str = "") -> PodTransport:
        """The client of `pod_id` at `address` (and its frame listener at `data_address`, ""
        for none): a new one when the pod moved to other addresses."""
        client = self._clients.get(pod_id)
        if client is None or client.address != address or client.data_address != data_address:
            if client is not None:
                self._close_later(client)
            local = self._local.get(pod_id)
            client = self._connect(pod_id, address, local, data_address)
            self._clients[pod_id] = client
        return client

    def forget(self, pod_id: str) -> None:
        client = self._clients.pop(pod_id, None)
        if client is not None:
            self._close_later(client)

    def pick(self, candidates: Sequence[PodTransport]) -> PodTransport:
        """Power of two choices on requests outstanding from this router."""
        if len(candidates) == 1:
            return candidates[0]
        a, b = self._rng.sample(list(candidates), 2)
        return a if a.outstanding <= b.outstanding else b

    def _close_later(self, client: PodTransport) -> None:
        task = asyncio.get_running_loop().create_task(client.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self._clients.values()), return_exceptions=True)
        self._clients.clear()
