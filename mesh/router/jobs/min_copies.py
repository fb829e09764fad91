"""The leader's job: keep every model's `min_copies` loaded (one more copy per model per round)."""

from __future__ import annotations

from mesh.errors import MeshError
from mesh.router.jobs.view import JobsView
from mesh.router.jobs.warn import WarnOnce


class MinCopies:
    def __init__(self, router: JobsView) -> None:
        self._router = router
        # The last reason each model could not get its min_copies, logged once, not each round.
        self._short = WarnOnce("min_copies of")

    async def run(self) -> None:
        """Load one more copy of each model below its min_copies (one per model per round)."""
        mirror = self._router.mirror
        for model_id, record in list(mirror.models.items()):
            if record.min_copies <= 0:
                continue
            copies = self._router.known_copies(model_id)
            if len(copies) >= record.min_copies:
                self._short.clear(model_id)
                continue
            try:
                await self._router.add_copy(model_id, exclude=sorted(copies))
            except MeshError as exc:
                self._short.warn(model_id, str(exc))
            else:
                self._short.clear(model_id)
        self._short.keep_only(mirror.models)
