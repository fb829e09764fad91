"""What the background jobs may use of their router: the narrow interface they are typed on.

`mesh.router.core.Router` satisfies it (mypy checks that where mesh.router.background hands
the router to the jobs); a job reaching for anything else of the router does not type-check.
Reads: the mirror and the copy view; writes: a copy added or a model loaded through the
router's single-flight loader, and (transitions) one transaction on the store.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Protocol

from mesh.cluster.codec import Keys
from mesh.cluster.mirror import Mirror
from mesh.cluster.store import KeyValueStore
from mesh.router.copies import CopyView
from mesh.router.transport import PodTransport


class JobsView(Protocol):
    @property
    def mirror(self) -> Mirror: ...

    @property
    def copies(self) -> CopyView: ...

    @property
    def store(self) -> KeyValueStore: ...

    @property
    def keys(self) -> Keys: ...

    # This router's traffic since the last scaling tick; the scaling job swaps it for an
    # empty counter each tick.
    requests: collections.Counter[str]

    @property
    def in_flight(self) -> collections.Counter[str]: ...

    def holders(self, model_id: str, exclude: Sequence[str] = ()) -> list[PodTransport]: ...

    def known_copies(self, model_id: str) -> set[str]: ...

    def pod_client(self, pod_id: str, address: str, data_address: str = "") -> PodTransport: ...

    async def add_copy(self, model_id: str, exclude: Sequence[str]) -> str: ...

    async def ensure_loaded(
        self, model_id: str, exclude: Sequence[str] = (), deadline: float | None = None
    ) -> str: ...
