"""The addresses a pod publishes in its record (mesh.pod.membership): ones routers can dial."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mesh.addresses import parse_address
from mesh.pod.membership import advertised_address
from mesh.pod.settings import PodSettings


@pytest.mark.parametrize(
    "advertise",
    ["-pod", "pod 0", "pod-0:notaport", "10.0.0.5:99999", "fd00::5]:8085", "fd00::5", "[pod]"],
)
def test_an_advertised_address_routers_cannot_use_is_refused_at_start(advertise: str) -> None:
    with pytest.raises(ValidationError) as refused:
        PodSettings(advertise=advertise)
    assert f"advertise\n  Value error, {advertise!r}" in str(refused.value)


@pytest.mark.parametrize(
    ("host", "published"),
    [("127.0.0.1", "127.0.0.1:8085"), ("::1", "[::1]:8085"), ("fd00::5", "[fd00::5]:8085")],
)
def test_a_pod_publishes_its_listening_host_as_an_address(host: str, published: str) -> None:
    settings = PodSettings(host=host, port=8085)
    assert advertised_address(settings, 8085) == published
    assert parse_address(published)  # what a router reads back


@pytest.mark.parametrize(
    ("advertise", "published"),
    [
        ("10.0.0.5", "10.0.0.5:9000"),
        ("pod-0.mesh", "pod-0.mesh:9000"),
        ("[fd00::5]", "[fd00::5]:9000"),  # [$(POD_IP)] on an IPv6 cluster
        ("pod-0.pods.ml.svc.cluster.local.", "pod-0.pods.ml.svc.cluster.local.:9000"),
        ("10.0.0.5:8085", "10.0.0.5:8085"),
        ("[fd00::5]:8085", "[fd00::5]:8085"),
    ],
)
def test_an_advertised_host_alone_is_reached_on_the_pods_port(
    advertise: str, published: str
) -> None:
    # A manifest can give the pod IP alone ($(POD_IP), [$(POD_IP)] on an IPv6 cluster) and
    # leave the port to the pod; a fully qualified name may end in its dot.
    settings = PodSettings(advertise=advertise, port=9000)
    assert advertised_address(settings, 9000) == published
    assert parse_address(published)


def test_an_empty_advertise_is_unset() -> None:
    # A template's optional value left empty: the pod publishes its host name, as it always did.
    assert PodSettings(advertise="").advertise is None
