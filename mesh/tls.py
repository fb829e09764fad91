"""TLS credentials from the settings' files, for both transports a mesh server speaks: gRPC's
credentials and the `ssl.SSLContext` of an asyncio listener or connection (mesh.frames).

    server = ServerCredentials.load(settings.tls, "--tls")      # None when TLS is off
    port = grpc_server.add_secure_port(address, server.grpc)
    frames = FrameServer(infer, limit, ssl_context=server.context)

    client = ClientCredentials.load(settings.pod_tls, "--pod-tls")
    channel = aio.secure_channel(address, client.grpc, options=client.options())
    frames = FrameClient(pod, address, limit, ssl_context=client.context,
                         server_hostname=client.server_name)

Both read their files once, at start. How it fails: a file that cannot be read, or that is
not a certificate or key (or a key that is not the certificate's), raises InvalidRequest
naming the flag, before anything listens or dials; the commands print it and exit with
status 2. A peer refused in the handshake is the transports' business: gRPC answers
UNAVAILABLE, a frame connection fails `Unavailable`.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from mesh.errors import InvalidRequest
from mesh.settings import ClientTLS, ServerTLS

__all__ = ["ClientCredentials", "ServerCredentials"]


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidRequest(f"{flag} {path}: {exc.strerror or exc}") from None


def _context(protocol: int) -> ssl.SSLContext:
    """A context that trusts nothing until given the mesh's CA: `ssl.create_default_context`
    also trusts the system's CAs, so a pod would take a client certificate any public CA
    issued, and the router a pod certificate, where gRPC's credentials trust the CA alone.
    (PROTOCOL_TLS_CLIENT checks the server's name and certificate by default.)"""
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _load_chain(context: ssl.SSLContext, cert: Path, key: Path, flag: str) -> None:
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise InvalidRequest(
            f"{flag}-cert {cert} / {flag}-key {key}: not a certificate and its key ({exc})"
        ) from None


def _load_ca(context: ssl.SSLContext, ca: Path, flag: str) -> None:
    try:
        context.load_verify_locations(str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise InvalidRequest(f"{flag}-ca {ca}: not a CA certificate ({exc})") from None


@dataclass(frozen=True)
class ServerCredentials:
    """A server's certificate for its gRPC port and its asyncio listeners; with a CA, both
    refuse a client without a certificate that chains to it."""

    grpc: grpc.ServerCredentials
    context: ssl.SSLContext
    mutual: bool

    @classmethod
    def load(cls, tls: ServerTLS, flag: str = "--tls") -> ServerCredentials | None:
        if tls.cert is None or tls.key is None:
            return None
        context = _context(ssl.PROTOCOL_TLS_SERVER)
        _load_chain(context, tls.cert, tls.key, flag)  # checks the files before gRPC takes them
        ca = None
        if tls.ca is not None:
            _load_ca(context, tls.ca, flag)
            context.verify_mode = ssl.CERT_REQUIRED
            ca = _read(tls.ca, f"{flag}-ca")
        credentials = grpc.ssl_server_credentials(
            [(_read(tls.key, f"{flag}-key"), _read(tls.cert, f"{flag}-cert"))],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )
        return cls(credentials, context, ca is not None)


@dataclass(frozen=True)
class ClientCredentials:
    """A client's trust in its servers (the CA) and, for mutual TLS, its own certificate."""

    grpc: grpc.ChannelCredentials
    context: ssl.SSLContext
    server_name: str | None

    @classmethod
    def load(cls, tls: ClientTLS, flag: str) -> ClientCredentials | None:
        if tls.ca is None:
            return None
        context = _context(ssl.PROTOCOL_TLS_CLIENT)
        _load_ca(context, tls.ca, flag)
        key = cert = None
        if tls.cert is not None and tls.key is not None:
            _load_chain(context, tls.cert, tls.key, flag)
            key, cert = _read(tls.key, f"{flag}-key"), _read(tls.cert, f"{flag}-cert")
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(tls.ca, f"{flag}-ca"),
            private_key=key,
            certificate_chain=cert,
        )
        return cls(credentials, context, tls.server_name)

    def options(self) -> list[tuple[str, str]]:
        """The channel options that make gRPC check `server_name` instead of the address."""
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]
