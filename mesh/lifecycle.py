"""What every mesh process's composition root shares: the service lifecycle and the metrics
endpoint.

A Service's `start()` returns once it listens and `aclose()` releases everything; `async with`
does both, and `wait_for_termination()` returns once `aclose()` has finished.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Any, Self

from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger(__name__)


async def stop_task(task: asyncio.Task[object] | None, what: str, timeout: float = 5.0) -> None:
    """Cancel a background task and wait for it, but not forever.

    On Python 3.11 a cancel can be lost (asyncio.wait_for swallows one that arrives as its inner
    wait completes) and the task runs on; awaiting it then hung a pod's shutdown. The task's
    loop should also check a closing flag; this bounds the wait whatever happens.
    """
    if task is None or task.done():
        return
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        log.warning("%s did not stop within %.0f s; leaving it behind", what, timeout)


class Service:
    def __init__(self) -> None:
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def wait_for_termination(self) -> None:
        await self._stopped.wait()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class MetricsEndpoint:
    """Prometheus text over HTTP from a registry of the process's own, in a daemon thread."""

    def __init__(self) -> None:
        self._httpd: Any = None
        self.port: int | None = None

    def start(self, port: int, host: str, registry: CollectorRegistry) -> int:
        self._httpd, _ = start_http_server(port, addr=host, registry=registry)
        self.port = int(self._httpd.server_address[1])
        return self.port

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
