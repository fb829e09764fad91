"""What every mesh process's composition root shares: the service lifecycle and the metrics
endpoint.

A Service's `start()` returns once it listens and `aclose()` releases everything; `async with`
does both, and `wait_for_termination()` returns once `aclose()` has finished.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, Self

from prometheus_client import CollectorRegistry, start_http_server


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
