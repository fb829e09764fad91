"""Kubernetes ``Status`` errors as the fake API server answers them: the real reasons and codes,
so the official client raises ``ApiException`` with ``.status`` set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.kube.resources import Resource

Obj = dict[str, Any]

_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Gone",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class KubeError(Exception):
    """An error the fake answers as a Kubernetes Status; raised by the helper methods too."""

    def __init__(
        self,
        code: int,
        message: str,
        reason: str | None = None,
        details: Obj | None = None,
    ) -> None:
        super().__init__(f"{code} {reason or _REASONS.get(code, '')}: {message}")
        self.code = code
        self.message = message
        self.reason = reason or _REASONS.get(code, "")
        self.details = details

    def status(self) -> Obj:
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def details_of(res: Resource, name: str, causes: list[Obj] | None = None) -> Obj:
    details: Obj = {"name": name, "kind": res.plural}
    if res.group:
        details["group"] = res.group
    if causes:
        details["causes"] = causes
    return details


def not_found(res: Resource, name: str) -> KubeError:
    return KubeError(404, f'{res.group_resource} "{name}" not found', details=details_of(res, name))


def conflict(res: Resource, name: str) -> KubeError:
    return KubeError(
        409,
        f'Operation cannot be fulfilled on {res.group_resource} "{name}": the object has been '
        "modified; please apply your changes to the latest version and try again",
        details=details_of(res, name),
    )


def invalid(res: Resource, name: str, field_path: str, problem: str) -> KubeError:
    kind = f"{res.kind}.{res.group}" if res.group else res.kind
    return KubeError(
        422,
        f'{kind} "{name}" is invalid: {field_path}: {problem}',
        details={
            **details_of(res, name, [{"message": problem, "field": field_path}]),
            "kind": res.kind,
        },
    )
