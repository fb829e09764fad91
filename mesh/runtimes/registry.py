"""Find runtimes through the `mesh.runtimes` entry-point group, or take them as given (tests)."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterable, Mapping
from importlib.metadata import entry_points
from pathlib import Path

from mesh.errors import InvalidRequest
from mesh.runtimes.base import Runtime

log = logging.getLogger(__name__)

GROUP = "mesh.runtimes"


class RuntimeRegistry:
    """The runtimes a pod can use, by name.

    >>> registry = RuntimeRegistry.discover()
    >>> registry.get("onnx").name
    'onnx'
    """

    def __init__(self, runtimes: Iterable[Runtime]) -> None:
        self._runtimes: dict[str, Runtime] = {}
        for runtime in runtimes:
            self._runtimes[runtime.name] = runtime

    @classmethod
    def discover(cls, only: Iterable[str] | None = None) -> RuntimeRegistry:
        """Every installed runtime whose framework imports; `only` narrows by name."""
        wanted = set(only) if only is not None else None
        found: list[Runtime] = []
        for ep in entry_points(group=GROUP):
            if wanted is not None and ep.name not in wanted:
                continue
            try:
                runtime_cls = ep.load()
            except Exception:
                log.exception("runtime %s from %s failed to import; skipped", ep.name, ep.value)
                continue
            requires: Iterable[str] = getattr(runtime_cls, "requires", ())
            missing = [m for m in requires if importlib.util.find_spec(m) is None]
            if missing:
                log.info("runtime %s unavailable: %s not installed", ep.name, ", ".join(missing))
                continue
            found.append(runtime_cls())
        return cls(found)

    @property
    def names(self) -> list[str]:
        return sorted(self._runtimes)

    def get(self, name: str) -> Runtime:
        try:
            return self._runtimes[name]
        except KeyError:
            raise InvalidRequest(f"no runtime {name!r} in this pod; it has {self.names}") from None

    def warm_up(self, name: str) -> None:
        """Run a runtime's warm-up; a runtime whose warm-up fails stays usable."""
        runtime = self._runtimes[name]
        warm_up = getattr(runtime, "warm_up", None)
        if warm_up is None:
            return
        try:
            warm_up()
        except Exception:
            log.warning(
                "warm-up of runtime %s failed; its first load will be slower", name, exc_info=True
            )

    def suffixes(self) -> Mapping[str, str]:
        """File suffix -> runtime name, for inferring a model's format."""
        return {s: r.name for r in self._runtimes.values() for s in r.suffixes}

    def format_of(self, file: Path) -> str | None:
        name = file.name.lower()
        for suffix, runtime in sorted(self.suffixes().items(), key=lambda kv: -len(kv[0])):
            if name.endswith(suffix):
                return runtime
        return None
