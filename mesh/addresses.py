"""Pod addresses as instance records carry them: `host:port`, an IPv6 host in brackets.

    >>> parse_address("10.0.0.5:8085")
    HostPort(host='10.0.0.5', port=8085)
    >>> parse_address("[fd00::5]:8086")
    HostPort(host='fd00::5', port=8086)

A pod writes its own record and every router reads it, so an address is input from elsewhere:
"nonsense", "host:notaport", "host:99999" or "" must make that one pod unreachable, never break
whoever reads it. gRPC would take "host:99999" as port 34463 (the number wraps), and asyncio
raises OverflowError for it; this module is the one place that says which addresses are usable.

How it fails: `BadAddress` (a ValueError) saying what is wrong with the address.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

# A host name or an IPv4 address: what DNS (and Kubernetes' service names) allow, and '_'; a
# fully qualified name may end in its root's dot.
_HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?")


class BadAddress(ValueError):
    """An address that names no usable host and port."""


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str  # an IPv6 address without its brackets
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(address: str) -> HostPort:
    """`host:port` or `[ipv6]:port` with a port from 1 to 65535; BadAddress otherwise."""
    host, colon, port = address.rpartition(":")
    if not colon:
        raise BadAddress(f"{address!r} is not host:port")
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise BadAddress(f"{address!r}: the port {port!r} is not a number from 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            return HostPort(str(ipaddress.IPv6Address(host[1:-1])), int(port))
        except ValueError:
            raise BadAddress(f"{address!r}: {host} is not an IPv6 address") from None
    if not _HOST_NAME.fullmatch(host):
        if _is_ipv6(host):
            raise BadAddress(f"{address!r}: an IPv6 host goes in brackets ([host]:port)")
        raise BadAddress(f"{address!r}: {host!r} is not a host name or address")
    return HostPort(host, int(port))


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def advertised(value: str, port: int) -> HostPort:
    """What a pod's `--advertise` names: `host:port` or `[ipv6]:port`, or a host alone (a name,
    an IPv4 address, `[ipv6]`) to be reached on `port`. An IPv6 address goes in brackets, with
    a port or without: "fd00::5:8085" could be the host fd00::5 on 8085 or the host
    fd00::5:8085, so it is refused rather than guessed. BadAddress otherwise."""
    if value.startswith("[") and value.endswith("]"):
        if not _is_ipv6(value[1:-1]):
            raise BadAddress(f"{value!r}: {value[1:-1]!r} is not an IPv6 address")
        return HostPort(str(ipaddress.IPv6Address(value[1:-1])), port)
    if ":" not in value and _HOST_NAME.fullmatch(value):
        return HostPort(value, port)
    return parse_address(value)
