"""Keep a lease alive from a thread of its own, so that nothing else in the process starves it.

A pod loading a large model, an event loop busy with requests, or a worker stuck in a framework
call must not cost the pod its lease (and every view its placements). The keeper runs its own
event loop in a daemon thread, with its own connection to the store (`connect()`; a store
safe across threads, like MemoryStore, is handed in as it is, with owns_store=False), and sends a
keep-alive every TTL/3. When etcd is unreachable it retries every second; once the lease is
known gone (LeaseNotFound, or its TTL passed without a successful refresh) it reports the loss
to the owner's loop through `on_lost` and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable

from mesh.cluster.store import KeyValueStore
from mesh.errors import LeaseNotFound, MeshError

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(
        self,
        connect: Callable[[], KeyValueStore],
        lease: int,
        ttl: int,
        on_lost: Callable[[int], None],
        owns_store: bool = True,
    ) -> None:
        self._connect = connect
        self._owns_store = owns_store
        self.lease = lease
        self._ttl = ttl
        self._on_lost = on_lost
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"lease-{lease:x}", daemon=True)
        self.refreshes = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop refreshing. Waits a moment for the thread (a daemon) rather than blocking the
        caller's event loop until an in-flight keep-alive times out."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(1)

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        store = self._connect()
        deadline = time.monotonic() + self._ttl
        try:
            while not self._stop.is_set():
                try:
                    remaining = await store.keep_alive(self.lease)
                    self.refreshes += 1
                    deadline = time.monotonic() + remaining
                    wait = max(remaining / 3, 0.2)
                except LeaseNotFound:
                    log.warning("lease %x is gone", self.lease)
                    self._on_lost(self.lease)
                    return
                except MeshError as exc:
                    if time.monotonic() >= deadline:
                        log.warning("lease %x expired while etcd was unreachable", self.lease)
                        self._on_lost(self.lease)
                        return
                    log.info("lease %x keep-alive failed (%s); retrying", self.lease, exc)
                    wait = 1.0
                await asyncio.get_running_loop().run_in_executor(None, self._stop.wait, wait)
        finally:
            if self._owns_store:
                with contextlib.suppress(Exception):
                    await store.aclose()
