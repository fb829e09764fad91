"""How the admin commands print: tables for people, JSON or YAML for programs.

Management API answers become plain data first (`to_data`): times as ISO 8601 UTC strings
(null when never), sizes as integers of bytes. Tables show sizes in binary units and times as
ages ("12s ago") measured against the router's clock where the answer carries it.

    print(render(response, "table"))
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from mesh.storagewire import from_message

OUTPUTS = ("table", "json", "yaml")
# Fields holding unix seconds, and int64 fields (which protobuf's JSON spells as strings).
_TIMES = {"since", "last_used", "lru_time", "updated_at", "now"}
_INTS = {"capacity_bytes", "used_bytes", "size_bytes", "size_estimate", "host_capacity_bytes",
         "host_used_bytes", "host_bytes", "artifact_bytes"}  # fmt: skip


def iso(seconds: float) -> str | None:
    if not seconds:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _convert(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _convert(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_convert(v, key) for v in value]
    if key in _TIMES and isinstance(value, int | float):
        return iso(float(value))
    if key in _INTS and isinstance(value, str):
        return int(value)
    return value


def to_data(message: Message) -> dict[str, Any]:
    raw = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    data: dict[str, Any] = _convert(raw)
    return data


def size(n: int) -> str:
    """Bytes in binary units: 0, 512B, 1.5Ki, 20.0Mi, 2.0Gi."""
    if n <= 0:
        return "0"
    value = float(n)
    for unit in ("B", "Ki", "Mi", "Gi", "Ti"):
        if value < 1024 or unit == "Ti":
            return f"{n}B" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{n}B"  # pragma: no cover - the loop always returns


def age(seconds: float, now: float) -> str:
    """How long ago `seconds` was: "-" for never, "4s ago", "3m ago", "2h ago", "5d ago"."""
    if not seconds:
        return "-"
    delta = max(0.0, now - seconds)
    if delta < 120:
        return f"{delta:.0f}s ago"
    if delta < 7200:
        return f"{delta / 60:.0f}m ago"
    if delta < 172800:
        return f"{delta / 3600:.0f}h ago"
    return f"{delta / 86400:.0f}d ago"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell, kubectl style; "(none)" under headers with no rows."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]  # fmt: skip
    if not rows:
        lines.append("(none)")
    return "\n".join(lines)


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def pods_table(pods: Sequence[Any], now: float) -> str:
    rows = []
    for p in pods:
        percent = f"{100 * p.used_bytes / p.capacity_bytes:.0f}%" if p.capacity_bytes else "-"
        models = ",".join(p.models)
        host = (
            f"{size(p.host_used_bytes)}/{size(p.host_capacity_bytes)} ({len(p.host_models)})"
            if p.host_capacity_bytes
            else "-"
        )
        rows.append((
            p.pod_id, p.address, f"{size(p.used_bytes)}/{size(p.capacity_bytes)}", percent, host,
            f"{len(p.models)}" + (f" ({_short(models, 40)})" if models else ""),
            age(p.lru_time, now).removesuffix(" ago"), p.loading_count,
            "draining" if p.draining else "serving", age(p.updated_at, now),
        ))  # fmt: skip
    headers = ("POD", "ADDRESS", "USED/CAPACITY", "USE", "HOST TIER", "MODELS", "LRU AGE",
               "LOADING", "STATE", "HEARTBEAT")  # fmt: skip
    return table(headers, rows)


def models_table(models: Sequence[Any], now: float) -> str:
    rows = []
    for m in models:
        copies = ",".join(f"{c.pod_id}" + ("" if c.state == "loaded" else f"({c.state})")
                          for c in m.copies)  # fmt: skip
        host = ",".join(h.pod_id for h in m.host_copies)
        rows.append((
            m.model_id, m.format, m.state, copies or "-", _short(host, 30) or "-",
            age(m.last_used, now), _short(m.last_failure) or "-",
        ))  # fmt: skip
    headers = ("MODEL", "FORMAT", "STATE", "COPIES", "HOST TIER", "LAST USE", "LAST FAILURE")
    return table(headers, rows)


def vmodels_table(vmodels: Sequence[Any]) -> str:
    rows = [(v.vmodel_id, v.active_model_id, v.target_model_id, v.transition,
             _short(v.last_failure) or "-") for v in vmodels]  # fmt: skip
    return table(("VMODEL", "ACTIVE", "TARGET", "TRANSITION", "LAST FAILURE"), rows)


def _fields(pairs: Sequence[tuple[str, object]]) -> str:
    width = max(len(k) for k, _ in pairs) + 1
    return "\n".join(f"{(k + ':').ljust(width)} {v}" for k, v in pairs)


def _storage(m: Any) -> str:
    """Where a ModelStatusResponse's files are, with the puller's options if any."""
    if not m.HasField("storage"):  # a router from before StorageRef
        return f"{m.storage_key or 'default'}:{m.storage_path}"
    ref = from_message(m.storage)
    options = ", ".join(f"{k}={v}" for k, v in sorted(ref.options().items()))
    return f"{ref} ({options})" if options else str(ref)


def model_detail(m: Any, now: float) -> str:
    o = m.options
    pairs: list[tuple[str, object]] = [
        ("Model", m.model_id), ("Format", m.format), ("State", m.state),
        ("Storage", _storage(m)),
        ("Copies", f"min {o.min_copies}, max {o.max_copies or 'any'}"),
        ("Last use", age(m.last_used, now)), ("Last failure", m.last_failure or "-"),
    ]  # fmt: skip
    if o.pinned_pods:
        pairs.append(("Pinned pods", ",".join(o.pinned_pods)))
    if o.required_labels:
        pairs.append(("Required", ",".join(f"{k}={v}" for k, v in o.required_labels.items())))
    rows = [(c.pod_id, "device", c.state, size(c.size_bytes), age(c.since, now),
             age(c.last_used, now), _short(c.error) or "-") for c in m.copies]  # fmt: skip
    # Its copies in pods' host tiers: demoted, not serving; the SIZE there is host memory.
    rows += [(h.pod_id, "host", "demoted", size(h.host_bytes) if h.host_bytes else "-", "-",
              "-", "-") for h in m.host_copies]  # fmt: skip
    copies = table(("POD", "TIER", "STATE", "SIZE", "SINCE", "LAST USE", "ERROR"), rows)
    return _fields(pairs) + "\n\n" + copies


def vmodel_detail(v: Any) -> str:
    return _fields([
        ("VModel", v.vmodel_id), ("Active", v.active_model_id), ("Target", v.target_model_id),
        ("Transition", v.transition), ("Last failure", v.last_failure or "-"),
    ])  # fmt: skip


def held_table(demand: Sequence[Any], now: float) -> str:
    """Requests the routers hold for pools with no pod (scale from zero), a row per pool, model
    and router."""
    rows = [(d.pool, d.model_id, d.router_id, d.held, age(d.since, now)) for d in demand]
    return table(("POOL", "HELD FOR", "ROUTER", "HELD", "SINCE"), rows)


def mesh_tables(status: Any) -> str:
    parts = [pods_table(status.pods, status.now), models_table(status.models, status.now)]
    if status.vmodels:
        parts.append(vmodels_table(status.vmodels))
    if status.demand:
        parts.append(held_table(status.demand, status.now))
    if status.demand_error:
        parts.append(f"held requests: not known ({status.demand_error})")
    return "\n\n".join(parts)


def dump(data: Mapping[str, Any] | Sequence[Any], output: str) -> str:
    if output == "yaml":
        import yaml

        text: str = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        return text.rstrip("\n")
    return json.dumps(data, indent=2)
