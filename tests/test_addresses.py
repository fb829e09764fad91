"""Pod addresses (mesh.addresses): what a record may carry, and the reason for one it may not."""

from __future__ import annotations

import pytest

from mesh.addresses import BadAddress, HostPort, parse_address


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("10.0.0.5:8085", HostPort("10.0.0.5", 8085)),
        ("pod-0.pods.mesh.svc.cluster.local:1", HostPort("pod-0.pods.mesh.svc.cluster.local", 1)),
        ("localhost:65535", HostPort("localhost", 65535)),
        ("[::1]:8086", HostPort("::1", 8086)),
        ("[FD00:0::5]:8086", HostPort("fd00::5", 8086)),
    ],
)
def test_a_usable_address_is_its_host_and_port(address: str, expected: HostPort) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["10.0.0.5:8085", "[::1]:8086"])
def test_an_address_reads_back_as_it_was_written(address: str) -> None:
    assert str(parse_address(address)) == address


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("", "is not host:port"),
        ("nonsense", "is not host:port"),
        ("host:notaport", "the port 'notaport' is not a number from 1 to 65535"),
        ("host:99999", "the port '99999' is not a number from 1 to 65535"),
        ("host:0", "the port '0' is not a number from 1 to 65535"),
        ("host:", "the port '' is not a number from 1 to 65535"),
        ("host:-1", "the port '-1' is not a number from 1 to 65535"),
        (
            "host:\uff18\uff10",
            "the port '\uff18\uff10' is not a number from 1 to 65535",
        ),  # not ASCII
        (":8085", "'' is not a host name or address"),
        ("ho st:8085", "'ho st' is not a host name or address"),
        ("http://host:8085", "'http://host' is not a host name or address"),
        ("::1:8085", "an IPv6 host goes in brackets ([host]:port)"),
        ("[nonsense]:8085", "[nonsense] is not an IPv6 address"),
        ("[]:8085", "[] is not an IPv6 address"),
    ],
)
def test_an_unusable_address_is_refused_saying_why(address: str, why: str) -> None:
    with pytest.raises(BadAddress) as refused:
        parse_address(address)
    assert str(refused.value) == f"{address!r}{'' if why.startswith('is') else ':'} {why}"
