"""The host tier: models evicted from the device kept in host memory, to come back without a pull.

A pod with `--host-tier BYTES` demotes a model it evicts for room instead of dropping it:

- on a GPU (any device tier that is not the host itself) the model demotes itself where its
  runtime can (`Demotable.demote`: a torch module moved to the CPU and kept, an XGBoost booster
  switched to the CPU);
- otherwise, and on a CPU-only pod, the tier keeps the model file's bytes (`SerializedCopy`), so
  that bringing it back is a deserialisation from memory (an ONNX session re-created from bytes,
  on the CUDA provider on a GPU pod), with no disk and no puller; except for a model that says
  it is worth keeping alive on the host too (`demote_on_host`: the transformers runtime's, whose
  module stays as it is, so that a promotion is the move back alone).

The tier holds at most `capacity` bytes (what each copy takes in host memory) and lets the least
recently used copy go first. A copy larger than the whole tier is not kept. Explicitly unloading
a model drops its copy too: an unload means the model should go, not move.

Everything here runs on the pod's event loop (no locks), except `demote`, which the cache runs in
its unload thread, and `file_copy`, which it runs in a thread of its own after the eviction.
Nothing here raises into the cache: a model that cannot be demoted is just evicted as before,
and says why in the log.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from mesh.runtimes.base import HostCopy, LoadedModel, LoadRequest, Runtime

if TYPE_CHECKING:
    from mesh.pod.cache import ModelSource

log = logging.getLogger(__name__)


class SerializedCopy:
    """A model's file, in memory: `restore` is the runtime's load from those bytes."""

    def __init__(self, runtime: Runtime, data: bytes) -> None:
        self._runtime = runtime
        self.data: bytes | None = data
        self.nbytes = len(data)

    def restore(self, request: LoadRequest) -> LoadedModel:
        if self.data is None:
            raise RuntimeError("the host copy was already let go")
        return self._runtime.load(replace(request, data=self.data))

    def close(self) -> None:
        self.data = None


def accepts_bytes(runtime: Runtime) -> bool:
    return bool(getattr(runtime, "accepts_bytes", False))


def demote(
    model: LoadedModel, runtime: Runtime, source: ModelSource, *, on_device: bool
) -> tuple[HostCopy | None, bool]:
    """What to keep of `model` in host memory, and whether the model itself is now owned by it.

    (copy, True): the model moved itself to the host; it must not be closed.
    (None, True): the model is to be closed, then its file's bytes read (`file_copy`): on a
    device tier the cache reads them after the eviction, so that the load waiting for the room
    does not wait for the read too.
    (None, False): nothing can be kept; the model is evicted as before.
    Runs in the unload thread.
    """
    # A model that keeps its live objects on the host (`demote_on_host`, the transformers
    # runtime) demotes itself on a CPU-only pod too: a promotion is then only the move back.
    if on_device or getattr(model, "demote_on_host", False):
        own: Callable[[], HostCopy | None] | None = getattr(model, "demote", None)
        if own is not None:
            try:
                copy = own()
            except Exception:
                log.warning("model %s could not demote itself", source.model_id, exc_info=True)
            else:
                if copy is not None:
                    return copy, True
    if not accepts_bytes(runtime):
        log.info(
            "model %s not kept in the host tier: runtime %s cannot load from bytes",
            source.model_id,
            runtime.name,
        )
        return None, False
    return None, True


def file_copy(runtime: Runtime, source: ModelSource, limit: int) -> SerializedCopy | None:
    """The model file's bytes, read now (in a worker thread); None when it cannot be read, or
    is larger than `limit` (the tier's bytes: it would not be kept, so it is not read)."""
    try:
        size = source.file.stat().st_size
        if size > limit:
            log.info(
                "model %s (%d bytes on disk) is larger than the host tier (%d): evicted",
                source.model_id,
                size,
                limit,
            )
            return None
        data = source.file.read_bytes()
    except OSError as exc:
        log.warning("model %s not kept in the host tier: %s", source.model_id, exc)
        return None
    return SerializedCopy(runtime, data)


@dataclass(slots=True)
class Demoted:
    """One model in the host tier: where it came from, what restores it, what it cost."""

    source: ModelSource
    copy: HostCopy
    # What the model was charged on the device: a promotion's estimate.
    device_bytes: int
    last_used: float  # monotonic, the model's last use on the device
    # True: the model moved itself to the host (Demotable); False: its file's bytes are kept.
    moved: bool = False

    @property
    def model_id(self) -> str:
        return self.source.model_id

    @property
    def nbytes(self) -> int:
        return max(int(self.copy.nbytes), 0)


@dataclass(frozen=True, slots=True)
class DemotedView:
    model_id: str
    format: str
    host_bytes: int
    device_bytes: int
    moved: bool  # the model itself, moved to the host; else its file's bytes


class HostTier:
    """Demoted models within `capacity` bytes of host memory, least recently used out first.

    >>> tier = HostTier(capacity=1 << 30)
    >>> dropped = tier.put(held)        # ids let go to make room
    >>> tier.take("m")                  # Demoted or None; the model leaves the tier
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._held: OrderedDict[str, Demoted] = OrderedDict()  # least recently used first
        self._used = 0
        self._on_change: Callable[[], None] | None = None
        self._on_let_go: Callable[[str], None] | None = None

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on the loop) after every change of what the tier holds."""
        self._on_change = callback

    def on_let_go(self, callback: Callable[[str], None]) -> None:
        """Call `callback(model_id)` (on the loop) when a copy is let go (not when a promotion
        takes it): LRU, too large for the tier, dropped, cleared."""
        self._on_let_go = callback

    @property
    def used(self) -> int:
        return self._used

    def __len__(self) -> int:
        return len(self._held)

    def holds(self, model_id: str) -> bool:
        return model_id in self._held

    def source_of(self, model_id: str) -> ModelSource | None:
        held = self._held.get(model_id)
        return None if held is None else held.source

    def adapters_of(self, base: str) -> tuple[str, ...]:
        """The ids of the adapters on `base` that the tier holds."""
        return tuple(m for m, h in self._held.items() if h.source.base == base)

    def put(self, held: Demoted) -> tuple[str, ...]:
        """Keep `held`, letting the least recently used copies go for room; their ids.

        A copy larger than the tier is let go at once (and is not in the answer).
        """
        self.drop(held.model_id)
        if held.nbytes > self.capacity:
            log.info(
                "model %s (%d bytes in host memory) is larger than the host tier (%d): evicted",
                held.model_id,
                held.nbytes,
                self.capacity,
            )
            self._let_go(held)
            return ()
        dropped: list[str] = []
        while self._used + held.nbytes > self.capacity and self._held:
            _, oldest = self._held.popitem(last=False)
            self._used -= oldest.nbytes
            dropped.append(oldest.model_id)
            self._let_go(oldest)
        # Keep the order by last use: a model demoted now may have been used before another
        # that was demoted earlier.
        self._held[held.model_id] = held
        for model_id in [m for m, h in self._held.items() if h.last_used > held.last_used]:
            self._held.move_to_end(model_id)
        self._used += held.nbytes
        if dropped:
            log.info("host tier let go of %s for %s", dropped, held.model_id)
        self._changed()
        return tuple(dropped)

    def take(self, model_id: str) -> Demoted | None:
        """The model's copy, out of the tier (for a promotion); None if it holds none."""
        held = self._held.pop(model_id, None)
        if held is not None:
            self._used -= held.nbytes
            self._changed()
        return held

    def drop(self, model_id: str) -> bool:
        held = self.take(model_id)
        if held is None:
            return False
        self._let_go(held)
        return True

    def views(self) -> tuple[DemotedView, ...]:
        """Most recently used first."""
        return tuple(
            DemotedView(h.model_id, h.source.format, h.nbytes, h.device_bytes, h.moved)
            for h in reversed(self._held.values())
        )

    def clear(self) -> None:
        for model_id in list(self._held):
            self.drop(model_id)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    def _let_go(self, held: Demoted) -> None:
        _close(held)
        if self._on_let_go is not None:
            try:
                self._on_let_go(held.model_id)
            except Exception:
                log.exception("on_let_go callback failed for %s", held.model_id)


def _close(held: Demoted) -> None:
    try:
        held.copy.close()
    except Exception:
        log.exception("letting the host copy of %s go failed", held.model_id)
