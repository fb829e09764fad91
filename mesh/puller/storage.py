"""The storage configuration, in the shape of ModelMesh's `storage-config` secret.

Entries are keyed by name; each is a JSON object with a `type` (`s3`, `gcs`, `azure`, `http` or
`https`, `pvc` or `file`) and that type's fields (docs/puller.md lists them). They are read from
a directory holding one file per key, as Kubernetes mounts a Secret (the `..data` links it
swaps on update are followed, dot-files skipped), or from one JSON file `{name: entry}` whose
entries may also be JSON strings (a Secret's `stringData`). A pull that names no key uses
`default`.

The source is checked for changes on every pull (a stat per file) and parsed again when one
changed, so a rotated secret applies without a restart.

How it fails: an unknown key, or an entry that is not JSON, not an object or has no known
`type`, raises StorageConfigError naming the key and what is wrong, never a value; one bad
entry leaves the others usable. Credentials never leave this module in clear: an entry's repr
shows field names only, and `scrub()` replaces every configured secret (and any URL's query
string and user info) in third-party text before the puller keeps it in an error or a log.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from mesh.errors import StorageConfigError

log = logging.getLogger(__name__)

DEFAULT_KEY = "default"
# Accepted `type` values and the backend each selects.
TYPES = {
    "s3": "s3",
    "gcs": "gcs",
    "azure": "azure",
    "http": "http",
    "https": "http",
    "pvc": "pvc",
    "file": "file",
}
# Fields whose values are credentials: scrubbed from every message, never shown.
SECRET_FIELDS = frozenset(
    {
        "access_key_id",
        "secret_access_key",
        "session_token",
        "private_key",
        "private_key_id",
        "client_secret",
        "connection_string",
        "account_key",
        "sas_token",
        "token",
        "client_key",
        "password",
    }
)
# Shorter values are not scrubbed: replacing two letters everywhere would garble messages, and
# no real credential is that short.
_MIN_SECRET = 4
_MAX_ENTRY_BYTES = 1 << 20
_URL = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/\s@]*@)?(?P<rest>[^\s?#'\"]*)"
    r"(?P<query>\?[^\s#'\"]*)?"
)


@dataclass(frozen=True, eq=False)
class StorageEntry:
    """One named entry; `fields` holds everything but `type`, shown by name only.

    >>> e = StorageEntry.parse("minio", {"type": "s3", "secret_access_key": "x" * 8})
    >>> e
    StorageEntry(name='minio', type='s3', fields=['secret_access_key'])
    """

    name: str
    type: str
    fields: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, name: str, value: object) -> StorageEntry:
        if isinstance(value, str | bytes):
            try:
                value = json.loads(value)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                where = f" (line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
                raise StorageConfigError(f"storage {name!r} is not valid JSON{where}") from None
        if not isinstance(value, dict):
            raise StorageConfigError(f"storage {name!r} is not a JSON object")
        kind = value.get("type")
        if not isinstance(kind, str) or kind.lower() not in TYPES:
            raise StorageConfigError(
                f"storage {name!r} has no known type (give one of {', '.join(sorted(TYPES))})"
            )
        fields = {k: v for k, v in value.items() if k != "type"}
        return cls(name, TYPES[kind.lower()], MappingProxyType(fields))

    def __repr__(self) -> str:
        return f"StorageEntry(name={self.name!r}, type={self.type!r}, fields={sorted(self.fields)})"

    def string(self, name: str, *, required: bool = False) -> str | None:
        """A string field; None when absent or empty. Errors name the field, not its value."""
        value = self.fields.get(name)
        if value is None or value == "":
            if required:
                raise StorageConfigError(
                    f"storage {self.name!r} ({self.type}) needs the field {name!r}"
                )
            return None
        if not isinstance(value, str):
            raise StorageConfigError(f"storage {self.name!r}: field {name!r} must be a string")
        return value

    def headers(self) -> dict[str, str]:
        """The `headers` field (http): each value a string or a list of strings."""
        raw = self.fields.get("headers") or {}
        if not isinstance(raw, dict):
            raise StorageConfigError(f"storage {self.name!r}: field 'headers' must be an object")
        out: dict[str, str] = {}
        for key, value in raw.items():
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                out[str(key)] = ", ".join(value)
            elif isinstance(value, str):
                out[str(key)] = value
            else:
                raise StorageConfigError(
                    f"storage {self.name!r}: header {key!r} must be a string or a list of strings"
                )
        return out

    def secrets(self) -> tuple[str, ...]:
        """Every credential this entry holds, as it could appear in text."""
        found: list[str] = []
        for name, value in self.fields.items():
            if name in SECRET_FIELDS and isinstance(value, str):
                found.append(value)
                if name == "connection_string":
                    # Its key or signature could be echoed alone (in a signing error).
                    for part in value.split(";"):
                        key, _, secret = part.partition("=")
                        if key.strip() in ("AccountKey", "SharedAccessSignature"):
                            found.append(secret.strip())
        headers = self.fields.get("headers")
        if isinstance(headers, dict):
            for value in headers.values():
                found.extend(value if isinstance(value, list) else [value])
        url = self.fields.get("url")
        if isinstance(url, str):
            parts = urllib.parse.urlsplit(url)
            found.extend([parts.query, parts.password or ""])
        lines: list[str] = []
        for value in found:
            if isinstance(value, str) and "\n" in value:  # a PEM key may be echoed line by line
                lines.extend(line.strip() for line in value.splitlines())
        return tuple(v for v in (*found, *lines) if isinstance(v, str) and len(v) >= _MIN_SECRET)

    def digest(self) -> str:
        """Changes whenever any field changes (credentials included): clients are rebuilt."""
        blob = json.dumps([self.type, dict(self.fields)], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` without the given secrets, URL query strings or URL user info."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) < _MIN_SECRET:
            continue
        for form in {secret, urllib.parse.quote(secret, safe=""), json.dumps(secret)[1:-1]}:
            text = text.replace(form, "***")

    def _url(match: re.Match[str]) -> str:
        userinfo = "***@" if match.group("userinfo") else ""
        query = "?***" if match.group("query") else ""
        return f"{match.group('scheme')}{userinfo}{match.group('rest')}{query}"

    return _URL.sub(_url, text)


def summary(exc: BaseException, secrets: Iterable[str], limit: int = 300) -> str:
    """The first line of a third-party error, scrubbed and bounded, for messages and logs."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = scrub(first, secrets)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def scrub_exception(exc: BaseException, secrets: Iterable[str]) -> BaseException:
    """Scrub `exc`'s own message in place, so that chaining it (`raise ... from exc`) keeps the
    cause for debugging without keeping a credential in any traceback."""
    secrets = tuple(secrets)
    # An exception type that will not take new args keeps its own.
    with contextlib.suppress(AttributeError, TypeError):
        exc.args = tuple(scrub(a, secrets) if isinstance(a, str) else a for a in exc.args)
    return exc


@dataclass(frozen=True, eq=False)
class StorageConfig:
    """The entries read at one moment, and the keys that failed to parse (with why)."""

    entries: Mapping[str, StorageEntry]
    invalid: Mapping[str, str]
    source: str

    def entry(self, key: str) -> StorageEntry:
        key = key or DEFAULT_KEY
        found = self.entries.get(key)
        if found is not None:
            return found
        if key in self.invalid:
            raise StorageConfigError(self.invalid[key])
        known = ", ".join(sorted([*self.entries, *self.invalid])) or "none"
        raise StorageConfigError(
            f"storage {key!r} is not in the storage configuration {self.source} (keys: {known})"
        )

    def all_secrets(self) -> tuple[str, ...]:
        return tuple(s for e in self.entries.values() for s in e.secrets())


class StorageConfigSource:
    """Reads the configuration at `path` (a directory or a JSON file), again when it changes.

    >>> source = StorageConfigSource(Path("/storage-config"))
    >>> source.current().entry("default")   # doctest: +SKIP
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._signature: object = None
        self._config = StorageConfig({}, {}, str(path))

    def current(self) -> StorageConfig:
        signature = self._stat()
        if signature != self._signature:
            self._config = self._read()
            self._signature = signature
            log.info(
                "storage configuration %s: %d entries%s",
                self.path,
                len(self._config.entries),
                f", invalid: {sorted(self._config.invalid)}" if self._config.invalid else "",
            )
        return self._config

    def _stat(self) -> object:
        if self.path is None:
            return None
        try:
            if not self.path.is_dir():
                st = self.path.stat()
                return (st.st_ino, st.st_mtime_ns, st.st_size)
            out = []
            for name in sorted(os.listdir(self.path)):
                if name.startswith("."):
                    continue
                try:
                    st = (self.path / name).stat()  # follows Kubernetes' ..data links
                except OSError:
                    continue
                out.append((name, st.st_ino, st.st_mtime_ns, st.st_size))
            return tuple(out)
        except OSError:
            return "missing"

    def _read(self) -> StorageConfig:
        source = str(self.path)
        entries: dict[str, StorageEntry] = {}
        invalid: dict[str, str] = {}
        if self.path is None:
            return StorageConfig({}, {}, "(none configured)")
        if self.path.is_dir():
            raw: dict[str, object] = {}
            for name in sorted(os.listdir(self.path)):
                file = self.path / name
                if name.startswith(".") or not file.is_file():
                    continue
                try:
                    raw[name] = _read_bounded(file)
                except OSError as exc:
                    invalid[name] = f"storage {name!r} cannot be read: {exc.strerror}"
        elif self.path.exists():
            try:
                loaded = json.loads(_read_bounded(self.path))
            except (OSError, ValueError) as exc:
                log.warning(
                    "storage configuration %s cannot be read: %s", source, type(exc).__name__
                )
                return StorageConfig({}, {}, source)
            if not isinstance(loaded, dict):
                log.warning("storage configuration %s is not a JSON object", source)
                return StorageConfig({}, {}, source)
            raw = loaded
        else:
            log.warning("storage configuration %s does not exist", source)
            return StorageConfig({}, {}, source)
        for name, value in raw.items():
            try:
                entries[name] = StorageEntry.parse(name, value)
            except StorageConfigError as exc:
                invalid[name] = str(exc)
        return StorageConfig(MappingProxyType(entries), MappingProxyType(invalid), source)


def _read_bounded(path: Path) -> bytes:
    with path.open("rb") as f:
        data = f.read(_MAX_ENTRY_BYTES + 1)
    if len(data) > _MAX_ENTRY_BYTES:
        raise OSError(0, f"larger than {_MAX_ENTRY_BYTES} bytes")
    return data
