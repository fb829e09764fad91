"""Settings that generate their flags (mesh.settings): every setting of every command has a flag
and a MESH_* variable, both in --help with its default; the spellings the manifests, tests and
docs use keep working; flags beat variables beat defaults."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from pydantic import ValidationError

from mesh.admin import AdminSettings
from mesh.cli import build_parser
from mesh.controller.settings import ControllerSettings
from mesh.embedded import ServeSettings
from mesh.pod.settings import PodSettings
from mesh.puller.settings import PullerSettings
from mesh.router.settings import RouterSettings
from mesh.settings import CommandSettings
from mesh.up import UpSettings

COMMANDS: dict[str, type[CommandSettings]] = {
    "pod": PodSettings,
    "router": RouterSettings,
    "puller": PullerSettings,
    "controller": ControllerSettings,
    "up": UpSettings,
    "serve": ServeSettings,
    "status": AdminSettings,
    "register": AdminSettings,
}


def _subparser(command: str) -> argparse.ArgumentParser:
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def _parse(command: str, *argv: str) -> argparse.Namespace:
    return build_parser().parse_args([command, *argv])


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_setting_has_a_flag_its_variable_and_its_default_in_help(command: str) -> None:
    settings = COMMANDS[command]
    parser = _subparser(command)
    helps = {o: a.help or "" for a in parser._actions for o in a.option_strings}
    missing = []
    for setting in settings.settings():
        text = helps.get(setting.flag)
        if text is None:
            missing.append(f"{setting.flag}: no flag")
            continue
        if f"${setting.env}" not in text:
            missing.append(f"{setting.flag}: no ${setting.env}")
        if "default: " not in text and "required" not in text:
            missing.append(f"{setting.flag}: no default")
        if not (setting.field.description or "").strip():
            missing.append(f"{setting.flag}: no description")
    assert missing == []
    # And --help prints them (argparse wraps lines: compare without the line breaks).
    shown = " ".join(parser.format_help().split())
    for setting in settings.settings():
        assert setting.flag in shown and f"${setting.env}" in shown


@pytest.mark.parametrize(
    ("command", "variable", "value", "path", "expected"),
    [
        # The spellings deploy/ and the docs use.
        ("router", "MESH_ROUTER_ETCD", "http://mesh-etcd:2379", ("etcd", "endpoints"),
         "http://mesh-etcd:2379"),
        ("router", "MESH_ROUTER_ETCD_PREFIX", "/other/", ("etcd", "prefix"), "/other/"),
        ("router", "MESH_ROUTER_VANISHED_POD_GRACE", "3", ("vanished_pod_grace",), 3.0),
        ("router", "MESH_ROUTER_POD_TLS_CA", "/tls/ca", ("pod_tls", "ca"), Path("/tls/ca")),
        ("router", "MESH_ROUTER_PORT", "9000", ("server", "port"), 9000),
        ("pod", "MESH_POD_ETCD", "http://e:2379", ("etcd", "endpoints"), "http://e:2379"),
        ("pod", "MESH_POD_MEMORY_LIMIT", "4Gi", ("memory_limit",), 4 * 2**30),
        ("pod", "MESH_POD_RUNTIMES", '["onnx","xgboost"]', ("runtimes",), ["onnx", "xgboost"]),
        ("pod", "MESH_POD_LABELS", '{"gpu":"a100"}', ("labels",), {"gpu": "a100"}),
        ("pod", "MESH_POD_ADVERTISE", "10.0.0.1:8085", ("advertise",), "10.0.0.1:8085"),
        ("puller", "MESH_PULLER_CACHE_BYTES", "20Gi", ("cache_bytes",), 20 * 2**30),
        ("puller", "MESH_PULLER_METRICS_PORT", "9113", ("metrics", "metrics_port"), 9113),
        ("controller", "MESH_CONTROLLER_ROUTER", "r:1", ("router",), "r:1"),
        ("status", "MESH_TOKEN", "secret", ("token",), "secret"),
        ("status", "MESH_TLS", "true", ("tls",), True),
    ],
)  # fmt: skip
def test_a_variable_sets_its_setting(
    command: str,
    variable: str,
    value: str,
    path: tuple[str, ...],
    expected: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(variable, value)
    settings: object = COMMANDS[command].from_args(_parse(command))
    for part in path:
        settings = getattr(settings, part)
    assert settings == expected


def test_flags_beat_variables_beat_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESH_ROUTER_ETCD_PREFIX", "/from-env/")
    monkeypatch.setenv("MESH_ROUTER_PORT", "9000")
    s = RouterSettings.from_args(_parse("router", "--port", "9001", "--host", "127.0.0.1"))
    assert (s.server.port, s.server.host) == (9001, "127.0.0.1")
    assert s.etcd.prefix == "/from-env/"
    # What was given of a group leaves the router's own defaults for the rest of it.
    assert (s.server.rest_port, s.server.metrics_port) == (8008, 2112)
    assert s.etcd.endpoints == "http://127.0.0.1:2379"


def test_flat_and_nested_keywords_build_the_same_settings() -> None:
    flat = RouterSettings(
        port=0, etcd="http://e:2379", etcd_prefix="/a/", tls_ca="/ca", tls_cert="/c", tls_key="/k"
    )
    nested = RouterSettings(
        server={"port": 0},
        etcd={"endpoints": "http://e:2379", "prefix": "/a/"},
        tls={"ca": "/ca", "cert": "/c", "key": "/k"},
    )
    assert flat == nested
    assert flat.server.rest_port == 8008  # the router's default, not the group class's


def test_off_flags_and_item_flags() -> None:
    s = PodSettings.from_args(
        _parse("pod", "--no-metrics", "--label", "zone=a", "--label", "gpu=t4", "--runtimes",
               "onnx, xgboost")
    )  # fmt: skip
    assert s.server.metrics_port is None
    assert s.labels == {"zone": "a", "gpu": "t4"}
    assert s.runtimes == ["onnx", "xgboost"]
    router = RouterSettings.from_args(_parse("router", "--no-rest"))
    assert router.server.rest_port is None
    puller = PullerSettings.from_args(_parse("puller", "--no-verify-checksums"))
    assert puller.verify_checksums is False
    controller = ControllerSettings.from_args(_parse("controller", "--no-leader-election"))
    assert controller.leader_election is False


def test_a_bad_value_names_its_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESH_POD_RUNTIMES", "onnx")  # not JSON: validation says so
    with pytest.raises(ValidationError, match="runtimes"):
        PodSettings.from_args(_parse("pod"))
    with pytest.raises(ValueError, match="KEY=VALUE"):
        PodSettings.from_args(_parse("pod", "--label", "zone"))
    with pytest.raises(ValidationError, match="workers"):
        PodSettings(workers=0)


def test_a_required_setting_is_required_by_the_flag_unless_its_variable_is_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(SystemExit):
        _parse("up")
    monkeypatch.setenv("MESH_UP_STORAGE", str(tmp_path))
    assert UpSettings.from_args(_parse("up")).storage == tmp_path
