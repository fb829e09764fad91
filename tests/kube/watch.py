"""Watch events and subscriptions: what a stored change looks like to one watcher (its resource,
namespace and selector: objects entering or leaving a selector arrive as ADDED or DELETED), and
the per-watch queue that keeps writers from ever waiting on a watcher.
"""

from __future__ import annotations

import contextlib
import queue
import socket
from dataclasses import dataclass, field
from typing import Any

from tests.kube.resources import Obj, Resource
from tests.kube.selector import Selector


@dataclass(frozen=True)
class Event:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    resource: Resource
    namespace: str | None
    obj: Obj  # never mutated once stored
    old: Obj | None  # the state before, for MODIFIED; selectors need it


@dataclass(eq=False)
class Watch:
    resource: Resource
    namespace: str | None
    selector: Selector
    sock: socket.socket
    bookmarks: bool
    queue: queue.SimpleQueue[tuple[Any, ...]] = field(default_factory=queue.SimpleQueue)
    ended: bool = False

    def translate(self, ev: Event) -> tuple[str, Obj] | None:
        if ev.resource != self.resource:
            return None
        if self.namespace is not None and ev.namespace != self.namespace:
            return None
        now = self.selector.matches(ev.obj)
        if ev.type == "MODIFIED" and ev.old is not None:
            before = self.selector.matches(ev.old)
            if before and now:
                return ("MODIFIED", ev.obj)
            if now:
                return ("ADDED", ev.obj)
            if before:
                return ("DELETED", ev.obj)
            return None
        return (ev.type, ev.obj) if now else None

    def end(self, *, graceful: bool) -> None:
        """Ask the serving thread to end the stream; an abrupt end also cuts the socket now."""
        if self.ended:
            return
        self.ended = True
        self.queue.put(("stop", graceful))
        if not graceful:
            shutdown_socket(self.sock)


def shutdown_socket(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
