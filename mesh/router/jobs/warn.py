"""A warning per model that repeats every round is logged when its message changes only."""

from __future__ import annotations

import logging
from collections.abc import Collection

log = logging.getLogger("mesh.router.background")


class WarnOnce:
    def __init__(self, what: str) -> None:
        self._what = what
        self._last: dict[str, str] = {}

    def warn(self, model_id: str, message: str) -> None:
        if self._last.get(model_id) != message:
            log.warning("%s %s: %s", self._what, model_id, message)
            self._last[model_id] = message

    def clear(self, model_id: str) -> None:
        self._last.pop(model_id, None)

    def keep_only(self, model_ids: Collection[str]) -> None:
        for model_id in set(self._last) - set(model_ids):
            del self._last[model_id]
