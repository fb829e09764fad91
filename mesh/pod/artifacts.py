"""Model files from a local directory, for a pod without a puller (embedded mode, tests).

    DirectoryArtifacts(Path("/models")).pull("m", StorageRef(path="fraud/v3"))  # /models/fraud/v3

Paths are checked to stay inside the root: `..`, absolute paths and links out are refused.
"""

from __future__ import annotations

from pathlib import Path

from mesh.errors import InvalidRequest, ModelNotFound
from mesh.storageref import StorageRef


class DirectoryArtifacts:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    async def pull(self, model_id: str, storage: StorageRef) -> str:
        path = storage.path
        target = (self.root / path).resolve()
        if not target.is_relative_to(self.root) or Path(path).is_absolute():
            raise InvalidRequest(f"model {model_id!r}: storage path {path!r} leaves the store")
        if not target.exists():
            raise ModelNotFound(f"model {model_id!r}: nothing at {storage}")
        return str(target)

    async def release(self, model_id: str) -> None:
        return None
