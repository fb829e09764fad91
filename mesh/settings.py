"""Typed settings that generate their own flags: the base every command's settings build on.

    class RouterSettings(CommandSettings, env_prefix="MESH_ROUTER_"):
        server: Annotated[ServerSettings, Nested(prefix="")] = ServerSettings(port=8033)
        etcd: Annotated[EtcdSettings, Nested()] = EtcdSettings()
        load_timeout: float = Field(120.0, gt=0, description="longest a cache miss may take")

Every setting, at the top or inside a nested group (etcd, TLS, the server's address and ports),
has one *flat name*: the group's prefix and the field's name (`etcd_prefix`, `tls_cert`), or the
prefix alone for a group's primary field (`etcd` is EtcdSettings.endpoints). The flat name is
the spelling everywhere a user writes the setting: the flag (`--etcd-prefix`), the environment
variable (`MESH_ROUTER_ETCD_PREFIX`) and the keyword (`RouterSettings(etcd_prefix="/a/")`).
`add_flags` writes one argparse flag per setting, its help the field's description with its
default and its variable; `from_args` builds the settings from parsed flags over the
environment over the defaults. Adding a setting is one field with a description.

How it fails: a value that does not validate raises pydantic's ValidationError (the commands
exit with status 2 and name the setting); a malformed list or mapping in an environment
variable reaches validation as the raw string and fails there, naming it.

A kernel module: every component may import it, and it imports none of them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self, get_args, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    WrapValidator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

__all__ = [
    "ClientTLS",
    "CommandSettings",
    "EtcdSettings",
    "Flag",
    "Group",
    "MetricsSettings",
    "Nested",
    "ServerSettings",
    "ServerTLS",
    "Setting",
    "add_flags",
]


@dataclass(frozen=True)
class Flag:
    """How one setting's flag differs from the default spelling (Annotated metadata).

    flag: the flag's name when it is not the flat name (`--label` for `labels`);
    primary: inside a group, the field whose flat name is the group's prefix alone;
    off: a second flag that sets the setting to None (`no-metrics`);
    items: how the flag's text becomes a list ("comma": a,b,c) or a mapping ("key=value",
    repeatable); the environment variable takes JSON, as pydantic-settings reads it;
    metavar, section: argparse's metavar and argument group.
    """

    flag: str | None = None
    primary: bool = False
    off: str | None = None
    items: Literal["comma", "key=value"] | None = None
    metavar: str | None = None
    section: str | None = None


@dataclass(frozen=True)
class Nested:
    """Marks a field as a nested group; its settings' flat names start with `prefix` ("": none;
    default: the field's name)."""

    prefix: str | None = None
    section: str | None = None


class Group(BaseModel):
    """A nested group of settings (a plain model: the command's settings read the environment)."""

    model_config = ConfigDict(extra="forbid")


class EtcdSettings(Group):
    """The cluster store: etcd's endpoints, this mesh's key prefix, and etcd's TLS."""

    endpoints: typing.Annotated[str | None, Flag(primary=True)] = Field(
        None, description="etcd endpoints, e.g. http://etcd-0:2379,http://etcd-1:2379"
    )
    prefix: str = Field("/mesh/", description="root key prefix of this mesh in etcd")
    ca: Path | None = Field(None, description="CA certificate for etcd's TLS")
    cert: Path | None = Field(None, description="client certificate for etcd")
    key: Path | None = Field(None, description="client key for etcd")


class ServerSettings(Group):
    """Where a server listens: its address, its gRPC port, and its REST and metrics ports."""

    host: str = Field("0.0.0.0", description="address to listen on")
    port: int = Field(8085, ge=0, le=65535, description="gRPC port (0 picks a free one)")
    rest_port: typing.Annotated[int | None, Flag(off="no-rest")] = Field(
        None, ge=0, le=65535, description="v2 REST port (unset: none)"
    )
    metrics_port: typing.Annotated[int | None, Flag(off="no-metrics")] = Field(
        2112, ge=0, le=65535, description="Prometheus port (unset: no /metrics endpoint)"
    )


class MetricsSettings(Group):
    """A Prometheus endpoint of its own, for a process whose other port is not a server's."""

    metrics_port: typing.Annotated[int | None, Flag(off="no-metrics")] = Field(
        2112, ge=0, le=65535, description="Prometheus port (unset: no /metrics endpoint)"
    )
    metrics_host: str = Field("0.0.0.0", description="address of the metrics endpoint")


class ServerTLS(Group):
    """TLS on a server's client-facing ports; with a CA, clients must present certificates."""

    cert: Path | None = Field(None, description="certificate for the client-facing ports")
    key: Path | None = Field(None, description="private key for the client-facing ports")
    ca: Path | None = Field(
        None, description="CA that client certificates must chain to (mutual TLS)"
    )

    @model_validator(mode="after")
    def _whole(self) -> Self:
        # Half a TLS setting must not leave the ports plaintext: a certificate without its
        # key, or a CA for clients with no certificate to serve, was once read as "no TLS".
        if (self.cert is None) != (self.key is None):
            raise ValueError("--tls-cert and --tls-key come together")
        if self.ca is not None and self.cert is None:
            raise ValueError("--tls-ca needs --tls-cert and --tls-key")
        return self


class ClientTLS(Group):
    """TLS from a client to mesh servers: the CA their certificates chain to (set: TLS on),
    this client's certificate and key (mutual TLS), and the name each server's certificate
    must carry when it is not the address dialled (servers reached by IP that share one
    certificate)."""

    ca: Path | None = Field(
        None, description="CA the servers' certificates chain to (unset: plaintext)"
    )
    cert: Path | None = Field(None, description="this client's certificate, for mutual TLS")
    key: Path | None = Field(None, description="the client certificate's private key")
    server_name: str | None = Field(
        None,
        description="name every server's certificate must carry (unset: the host dialled)",
    )

    @model_validator(mode="after")
    def _whole(self) -> Self:
        # Half a TLS setting must not leave the connections plaintext.
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate and its key come together")
        if self.ca is None and (self.cert is not None or self.server_name is not None):
            raise ValueError("a client certificate or server name needs the CA (TLS is on with it)")
        return self


@dataclass(frozen=True)
class Setting:
    """One setting as a user spells it: its flat name, where it lives, and its field."""

    flat: str
    path: tuple[str, ...]
    field: FieldInfo
    default: Any
    env: str

    @property
    def flag(self) -> str:
        marker = _flag_of(self.field)
        return "--" + (marker.flag or self.flat).replace("_", "-")

    @property
    def off(self) -> str | None:
        marker = _flag_of(self.field)
        return "--" + marker.off if marker.off else None


def _flag_of(field: FieldInfo) -> Flag:
    return next((m for m in field.metadata if isinstance(m, Flag)), Flag())


def _nested_of(field: FieldInfo) -> Nested | None:
    return next((m for m in field.metadata if isinstance(m, Nested)), None)


def _default(field: FieldInfo) -> Any:
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return field.default


def _strip_optional(annotation: Any, annotated: bool = True) -> Any:
    """`X | None` to X, and (with `annotated`) `Annotated[X, ...]` to X."""
    if get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return _strip_optional(rest[0], annotated)
    if annotated and get_origin(annotation) is typing.Annotated:
        return _strip_optional(get_args(annotation)[0])
    return annotation


def _parsed(field: FieldInfo) -> bool:
    """Whether the field parses its own text (ByteSize: "4Gi" is an int to pydantic only)."""
    plain = _strip_optional(field.annotation, annotated=False)
    validators = (BeforeValidator, PlainValidator, WrapValidator)
    return get_origin(plain) is typing.Annotated or any(
        isinstance(m, validators) for m in field.metadata
    )


def _is_complex(field: FieldInfo) -> bool:
    return get_origin(_strip_optional(field.annotation)) in (list, dict, set, tuple)


class CommandSettings(BaseSettings):
    """The settings of one command: top-level settings and nested groups, read from keywords
    (flat or nested), then MESH_<COMMAND>_<FLAT NAME> variables, then the defaults."""

    # The environment's prefix ("MESH_ROUTER_") is the class keyword env_prefix.
    model_config = SettingsConfigDict(extra="forbid", env_prefix="MESH_")

    @classmethod
    def settings(cls) -> Iterator[Setting]:
        """Every setting, in declaration order, nested ones where their group is."""
        for name, field in cls.model_fields.items():
            nested = _nested_of(field)
            if nested is None:
                yield Setting(name, (name,), field, _default(field), cls._env(name))
                continue
            group = _strip_optional(field.annotation)
            prefix = name if nested.prefix is None else nested.prefix
            defaults = _default(field)
            for inner, inner_field in group.model_fields.items():
                if _flag_of(inner_field).primary:
                    flat = prefix
                else:
                    flat = f"{prefix}_{inner}" if prefix else inner
                default = getattr(defaults, inner)
                yield Setting(flat, (name, inner), inner_field, default, cls._env(flat))

    @classmethod
    def _env(cls, flat: str) -> str:
        return (cls.model_config.get("env_prefix", "") + flat).upper()

    @classmethod
    def fold(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """Flat names to nested dicts: {"etcd": "http://e:2379", "etcd_prefix": "/a/"} becomes
        {"etcd": {"endpoints": "http://e:2379", "prefix": "/a/"}}. A group given whole (a dict
        or a model) is kept; flat names given beside it override its fields."""
        out: dict[str, Any] = {}
        by_flat = {s.flat: s for s in cls.settings()}
        groups = {n for n, f in cls.model_fields.items() if _nested_of(f) is not None}
        for key, value in data.items():
            if key in groups and isinstance(value, BaseModel):
                value = value.model_dump(exclude_unset=True)
            if key in groups and isinstance(value, dict):
                merged = out.setdefault(key, {})
                for inner, v in value.items():
                    merged.setdefault(inner, v)
                continue
            setting = by_flat.get(key)
            if setting is None or len(setting.path) == 1:
                out[key] = value
                continue
            group, inner = setting.path
            out.setdefault(group, {})[inner] = value
        return out

    @model_validator(mode="before")
    @classmethod
    def _fold_flat_names(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        out = cls.fold(data)
        # A group given in part keeps this command's defaults for the rest (the router's port
        # is 8033 even when only its host is given), not the group class's.
        for name, field in cls.model_fields.items():
            if _nested_of(field) is not None and isinstance(out.get(name), dict):
                out[name] = {**_default(field).model_dump(), **out[name]}
        return out

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        assert issubclass(settings_cls, CommandSettings)
        return (_Folded(settings_cls, init_settings), _FlatEnvironment(settings_cls))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Self:
        """The settings from parsed flags (those given) over the environment and defaults."""
        given: dict[str, Any] = {}
        for setting in cls.settings():
            dest = _dest(setting)
            if getattr(args, f"{dest}__off", False):
                given[setting.flat] = None
                continue
            value = getattr(args, dest, None)
            if value is None:
                continue
            items = _flag_of(setting.field).items
            if items == "comma":
                value = [v.strip() for v in value.split(",") if v.strip()]
            elif items == "key=value":
                pairs = [v.split("=", 1) for v in value]
                bad = [v for v, p in zip(value, pairs, strict=True) if len(p) != 2]
                if bad:
                    raise ValueError(f"{setting.flag} takes KEY=VALUE, got {bad[0]!r}")
                value = dict(pairs)
            given[setting.flat] = value
        return cls(**given)


class _Folded(PydanticBaseSettingsSource):
    """The keywords, flat names folded into their groups (so they merge with the environment's)."""

    def __init__(self, settings_cls: type[CommandSettings], inner: PydanticBaseSettingsSource):
        super().__init__(settings_cls)
        self._cls = settings_cls
        self._inner = inner

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ answers whole

    def __call__(self) -> dict[str, Any]:
        return self._cls.fold(self._inner())


class _FlatEnvironment(PydanticBaseSettingsSource):
    """MESH_<COMMAND>_<FLAT NAME> variables (any case), folded into their groups; lists and
    mappings as JSON."""

    def __init__(self, settings_cls: type[CommandSettings]):
        super().__init__(settings_cls)
        self._cls = settings_cls

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ answers whole

    def __call__(self) -> dict[str, Any]:
        environ = {k.upper(): v for k, v in os.environ.items()}
        found: dict[str, Any] = {}
        for setting in self._cls.settings():
            if setting.env not in environ:
                continue
            value: Any = environ[setting.env]
            if _is_complex(setting.field):
                with contextlib.suppress(ValueError):  # validation names the setting and value
                    value = json.loads(value)
            found[setting.flat] = value
        return self._cls.fold(found)


def _dest(setting: Setting) -> str:
    return setting.flat


def _shown(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int) and value >= 2**20 and value % 2**20 == 0:
        for unit, size in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20)):
            if value % size == 0:
                return f"{value // size}{unit}"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "none"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "none"
    return str(value)


def add_flags(
    parser: argparse.ArgumentParser, settings: type[CommandSettings], section: str | None = None
) -> None:
    """One flag per setting of `settings`, each with its description, default and variable
    (in the argument group `section`, or the groups the settings name)."""
    sections: dict[str, Any] = {}
    top: Any = parser.add_argument_group(section) if section else parser
    nested_sections = {
        name: n.section
        for name, f in settings.model_fields.items()
        if (n := _nested_of(f)) is not None and n.section
    }
    for setting in settings.settings():
        marker = _flag_of(setting.field)
        group = marker.section or nested_sections.get(setting.path[0])
        target = top
        if group:
            if group not in sections:
                sections[group] = parser.add_argument_group(group)
            target = sections[group]
        description = setting.field.description or ""
        required = setting.field.is_required()
        shown = "required" if required else f"default: {_shown(setting.default)}"
        help_text = f"{description} ({shown}; ${setting.env})"
        help_text = help_text.replace("%", "%%")
        kind = _strip_optional(setting.field.annotation)
        kw: dict[str, Any] = {"dest": _dest(setting), "default": None, "help": help_text}
        if required and setting.env not in {k.upper() for k in os.environ}:
            kw["required"] = True  # argparse names it; the variable, when set, stands in
        if marker.metavar:
            kw["metavar"] = marker.metavar
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif marker.items == "key=value":
            kw["action"] = "append"
        elif get_origin(kind) is Literal:
            kw["choices"] = list(get_args(kind))
        elif kind in (int, float, Path) and not _parsed(setting.field):
            kw["type"] = kind
        target.add_argument(setting.flag, **kw)
        if setting.off and setting.default is not None:
            target.add_argument(
                setting.off,
                dest=f"{_dest(setting)}__off",
                action="store_true",
                help=f"unset {setting.flag}",
            )
