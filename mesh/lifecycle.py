"""What every mesh process's composition root shares: the service lifecycle and the metrics
endpoint.

A Service's `start()` returns once it listens and `aclose()` releases everything; `async with`
does both, and `wait_for_termination()` returns once `aclose()` has finished.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from types import TracebackType
from typing import Any, Self

from prometheus_client import CollectorRegistry, start_http_server

from mesh.errors import InvalidRequest

log = logging.getLogger(__name__)


def _bind_error(host: str, port: int, what: str, exc: OSError) -> InvalidRequest:
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE:
        reason = "the port is in use by another process"
    return InvalidRequest(f"cannot listen on {host}:{port} ({what}): {reason}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now (the kernel's pick), for a process started next to take.

    The one copy: `mesh up`, the tests and the benchmarks all use it. Another process may take
    the port between this call and the bind; where that matters, bind port 0 and read it back.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def check_port_free(host: str, port: int, what: str) -> None:
    """Raise InvalidRequest naming the port when `host:port` cannot be bound.

    gRPC's own bind failure is a RuntimeError without the reason, after a C-level log line; a
    trial bind first gives one clear line instead. Port 0 (any free port) always passes.
    """
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as trial:
        trial.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
        try:
            trial.bind((host, port))
        except OSError as exc:
            raise _bind_error(host, port, what, exc) from exc


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
        """Serve /metrics; InvalidRequest naming the port when it cannot be bound."""
        try:
            self._httpd, _ = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise _bind_error(host, port, "the metrics port; --metrics-port", exc) from exc
        self.port = int(self._httpd.server_address[1])
        return self.port

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
