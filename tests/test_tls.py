"""The TLS settings of the pod and of the router's pod transport: what validates, and the one
clear error a file that is not a certificate gets (mesh.tls). The handshakes themselves are
tests/router/test_pod_tls.py's."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from mesh.cli import main
from mesh.errors import InvalidRequest
from mesh.pod.server import PodServer
from mesh.pod.settings import PodSettings
from mesh.router.settings import RouterSettings
from mesh.settings import ClientTLS
from mesh.tls import ClientCredentials, ServerCredentials
from tests.certs import make_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certs(tmp_path_factory.mktemp("certs"))


def test_plaintext_is_the_default_on_both_sides() -> None:
    assert ServerCredentials.load(PodSettings().tls) is None
    assert ClientCredentials.load(RouterSettings().pod_tls, "--pod-tls") is None


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"tls_cert": "/c", "tls_key": "/k"}, "--tls-cert needs --tls-ca"),
        ({"tls_cert": "/c", "tls_ca": "/ca"}, "--tls-cert and --tls-key come together"),
        ({"tls_ca": "/ca"}, "--tls-ca needs --tls-cert"),
    ],
)
def test_a_pod_takes_its_certificate_key_and_ca_together(
    given: dict[str, str], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        PodSettings(**given)
    assert PodSettings(tls_cert="/c", tls_key="/k", tls_ca="/ca").tls.ca == Path("/ca")


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"tls_cert": "/c"}, "--tls-cert and --tls-key come together"),
        ({"tls_key": "/k", "tls_ca": "/ca"}, "--tls-cert and --tls-key come together"),
        ({"tls_ca": "/ca"}, "--tls-ca needs --tls-cert"),
    ],
)
def test_the_router_refuses_half_a_tls_setting(
    given: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # A certificate without its key once started the client-facing ports in plaintext.
    with pytest.raises(ValidationError, match=message):
        RouterSettings(**given)
    assert main(["router", *(f"--{k.replace('_', '-')}={v}" for k, v in given.items())]) == 2
    assert message in capsys.readouterr().err
    assert RouterSettings(tls_cert="/c", tls_key="/k").tls.ca is None  # TLS, any client


def test_the_pods_flags_and_variables(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MESH_POD_TLS_CA", "/tls/ca.crt")
    monkeypatch.setenv("MESH_ROUTER_POD_TLS_SERVER_NAME", "mesh-pod")
    pod = PodSettings(tls_cert="/tls/tls.crt", tls_key="/tls/tls.key")
    assert pod.tls.ca == Path("/tls/ca.crt")
    assert RouterSettings(pod_tls_ca="/tls/ca.crt").pod_tls.server_name == "mesh-pod"
    # A pod given a certificate and no CA does not start: status 2, the reason on stderr.
    monkeypatch.delenv("MESH_POD_TLS_CA")
    assert main(["pod", "--tls-cert", "/tls/tls.crt", "--tls-key", "/tls/tls.key"]) == 2
    assert "--tls-cert needs --tls-ca" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"cert": "/c", "key": "/k"}, "needs the CA"),
        ({"ca": "/ca", "cert": "/c"}, "certificate and its key come together"),
        ({"server_name": "mesh-pod"}, "needs the CA"),
    ],
)
def test_the_routers_pod_tls_takes_its_ca_first(given: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ClientTLS(**given)


def test_a_file_that_is_not_a_certificate_is_one_clear_error_naming_its_flag(
    certs: Path, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    pod = PodSettings(tls_cert=junk, tls_key=certs / "server.key", tls_ca=certs / "ca.crt").tls
    with pytest.raises(InvalidRequest, match=r"--tls-cert .*junk\.pem"):
        ServerCredentials.load(pod)
    # A key that is not the certificate's.
    mismatched = pod.model_copy(update={"cert": certs / "server.crt", "key": certs / "client.key"})
    with pytest.raises(InvalidRequest, match="not a certificate and its key"):
        ServerCredentials.load(mismatched)
    with pytest.raises(InvalidRequest, match=r"--pod-tls-ca .*junk\.pem"):
        ClientCredentials.load(ClientTLS(ca=junk), "--pod-tls")
    missing = ClientTLS(ca=certs / "ca.crt", cert=tmp_path / "gone.crt", key=certs / "client.key")
    with pytest.raises(InvalidRequest, match="--pod-tls"):
        ClientCredentials.load(missing, "--pod-tls")


async def test_a_pod_with_a_bad_certificate_stops_before_it_listens(
    certs: Path, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    settings = PodSettings(
        host="127.0.0.1", port=0, metrics_port=None, tls_cert=certs / "server.crt",
        tls_key=certs / "server.key", tls_ca=junk,
    )  # fmt: skip
    pod = PodServer(settings)
    with pytest.raises(InvalidRequest, match=r"--tls-ca .*junk\.pem"):
        await pod.start()
    assert pod.port == 0  # nothing listened
    await pod.aclose()
