"""The v2 REST API's endpoints, as plain coroutines over a backend: no HTTP framework here.

Each endpoint takes what the URL, the headers and the body say and returns a `Reply` (status,
body, headers); mesh.http.app mounts them on the HTTP server. A backend is whatever answers the
v2 protocol in protobuf terms: the router (forwarding to pods, with the miss path) or a pod's
data plane. Errors are MeshErrors (a pod's answer passed on by the router is one too); the app
turns them into `{"error": "..."}` with the status of mesh.grpcstatus's table.

Endpoints (the v2 REST protocol, plus the model repository extension):

    GET  /v2                                   server metadata (and the extensions served)
    GET  /v2/health/live, /v2/health/ready     200, or 503 when not ready
    GET  /v2/models/{m}[/versions/{v}]         model metadata
    GET  /v2/models/{m}[/versions/{v}]/ready   200, 503 when not loaded, 404 when unknown
    POST /v2/models/{m}[/versions/{v}]/infer   JSON or binary tensors
    POST /v2/repository/index                  [{"name", "version", "state", "reason"}]
    POST /v2/repository/models/{m}/load        ensure the model is loaded
    POST /v2/repository/models/{m}/unload      unload it
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from mesh import __version__
from mesh.errors import InvalidRequest
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.http import codec

# The extensions this server speaks, listed in the server metadata (GET /v2).
EXTENSIONS = ("binary_tensor_data", "model_repository")
_MODEL_HEADERS = ("mm-vmodel-id", "mm-model-id")


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=lambda: {"content-type": "application/json"})

    @classmethod
    def json(cls, doc: Any, status: int = 200) -> Reply:
        return cls(status, codec.dumps(doc))


@dataclass(frozen=True, slots=True)
class ModelIndexEntry:
    name: str
    state: str  # READY, LOADING, UNAVAILABLE (Triton's names)
    reason: str = ""
    version: str = ""


class V2Backend(Protocol):
    """The v2 protocol as a REST front needs it; the router and a pod each provide one."""

    def ready(self) -> bool: ...

    async def model_ready(self, name: str, version: str) -> bool:
        """Whether the model can serve now; ModelNotFound when it does not exist."""
        ...

    async def model_metadata(
        self, name: str, version: str, timeout: float | None
    ) -> pb.ModelMetadataResponse: ...

    async def infer(
        self, request: pb.ModelInferRequest, name: str, timeout: float | None
    ) -> pb.ModelInferResponse:
        """Run `request` on the model called `name` (a model id or a vmodel)."""
        ...

    async def repository_index(self, ready_only: bool) -> list[ModelIndexEntry]: ...

    async def repository_load(self, name: str, timeout: float | None) -> None: ...

    async def repository_unload(self, name: str) -> None: ...


def routed_name(url_name: str, headers: Mapping[str, str]) -> str:
    """ModelMesh's routing headers override the URL's model name, as on gRPC."""
    for header in _MODEL_HEADERS:
        value = headers.get(header)
        if value:
            return value
    return url_name


class V2Endpoints:
    """The endpoints over one backend. `headers` are lower-cased."""

    def __init__(self, backend: V2Backend, name: str = "mesh") -> None:
        self.backend = backend
        self.name = name

    async def server_metadata(self) -> Reply:
        return Reply.json(
            {"name": self.name, "version": __version__, "extensions": list(EXTENSIONS)}
        )

    async def live(self) -> Reply:
        return Reply.json({"live": True})

    async def ready(self) -> Reply:
        ready = self.backend.ready()
        return Reply.json({"ready": ready}, 200 if ready else 503)

    async def model_ready(self, name: str, version: str, headers: Mapping[str, str]) -> Reply:
        name = routed_name(name, headers)
        ready = await self.backend.model_ready(name, version)
        return Reply.json({"name": name, "ready": ready}, 200 if ready else 503)

    async def model_metadata(
        self, name: str, version: str, headers: Mapping[str, str], timeout: float | None = None
    ) -> Reply:
        routed = routed_name(name, headers)
        response = await self.backend.model_metadata(routed, version, timeout)
        doc = codec.model_metadata_to_json(response)
        doc["name"] = routed
        return Reply.json(doc)

    async def infer(
        self,
        name: str,
        version: str,
        headers: Mapping[str, str],
        body: bytes,
        timeout: float | None = None,
    ) -> Reply:
        routed = routed_name(name, headers)
        # An unknown model is a 404 whatever the body holds.
        await self.backend.model_ready(routed, version)
        request = codec.decode_infer_request(
            body, headers.get(codec.HEADER_LENGTH), routed, version
        )
        deadline = request.timeout if request.timeout is not None else timeout
        response = await self.backend.infer(request.message, routed, deadline)
        data, out_headers = codec.encode_infer_response(
            response, request.binary_outputs, request.all_binary, model_name=routed
        )
        return Reply(200, data, out_headers)

    async def repository_index(self, body: bytes) -> Reply:
        doc = codec.parse_json(body) if body.strip() else {}
        if not isinstance(doc, dict):
            raise InvalidRequest("the repository index body must be a JSON object")
        ready = doc.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidRequest("ready must be a boolean")
        entries = await self.backend.repository_index(ready)
        return Reply.json([_index_json(e) for e in entries])

    async def repository_load(self, name: str, body: bytes, timeout: float | None = None) -> Reply:
        _check_repository_body(body)
        await self.backend.repository_load(name, timeout)
        return Reply(200, b"")

    async def repository_unload(self, name: str, body: bytes) -> Reply:
        _check_repository_body(body)
        await self.backend.repository_unload(name)
        return Reply(200, b"")


def _index_json(entry: ModelIndexEntry) -> dict[str, str]:
    doc = {"name": entry.name, "state": entry.state}
    if entry.version:
        doc["version"] = entry.version
    if entry.reason:
        doc["reason"] = entry.reason
    return doc


def _check_repository_body(body: bytes) -> None:
    if body.strip():
        doc = codec.parse_json(body)
        if not isinstance(doc, dict):
            raise InvalidRequest("the body must be a JSON object")
