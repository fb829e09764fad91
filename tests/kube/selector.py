"""Label and field selectors: equality-based label requirements (``=``, ``==``, ``!=``, ``key``,
``!key``) and the ``metadata.name``/``metadata.namespace`` field selectors; set-based
requirements are refused with 400.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tests.kube.errors import KubeError

Obj = dict[str, Any]

_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Selector:
    labels: tuple[
        tuple[str, str, str], ...
    ] = ()  # (key, op, value), op in "=", "!=", "exists", "!"
    fields: tuple[tuple[str, str, str], ...] = ()

    @classmethod
    def parse(cls, label_selector: str | None, field_selector: str | None) -> Selector:
        labels: list[tuple[str, str, str]] = []
        for term in _terms(label_selector, "labelSelector"):
            if "!=" in term:
                key, value = term.split("!=", 1)
                labels.append((key.strip(), "!=", value.strip()))
            elif "=" in term:
                key, value = re.split(r"==?", term, maxsplit=1)
                labels.append((key.strip(), "=", value.strip()))
            elif term.startswith("!") and _LABEL_KEY.match(term[1:].strip()):
                labels.append((term[1:].strip(), "!", ""))
            elif _LABEL_KEY.match(term):
                labels.append((term, "exists", ""))
            else:
                raise KubeError(400, f"unable to parse requirement {term!r} (fake: equality only)")
        fields: list[tuple[str, str, str]] = []
        for term in _terms(field_selector, "fieldSelector"):
            op = "!=" if "!=" in term else "="
            key, value = re.split(r"!=|==?", term, maxsplit=1)
            key = key.strip()
            if key not in ("metadata.name", "metadata.namespace"):
                raise KubeError(400, f'field label not supported: "{key}"')
            fields.append((key, op, value.strip()))
        return cls(tuple(labels), tuple(fields))

    def matches(self, obj: Obj) -> bool:
        meta = obj.get("metadata") or {}
        have = meta.get("labels") or {}
        for key, op, value in self.labels:
            if (
                (op == "=" and have.get(key) != value)
                or (op == "!=" and have.get(key) == value)
                or (op == "exists" and key not in have)
                or (op == "!" and key in have)
            ):
                return False
        for key, op, value in self.fields:
            actual = meta.get(key.split(".", 1)[1], "")
            if (actual == value) != (op == "="):
                return False
        return True


def _terms(selector: str | None, what: str) -> list[str]:
    if not selector:
        return []
    if "(" in selector or " in " in selector or " notin " in selector:
        raise KubeError(400, f"{what}: set-based requirements are not supported by the fake")
    return [t.strip() for t in selector.split(",") if t.strip()]
