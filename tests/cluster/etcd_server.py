"""A real etcd server (Debian's etcd-server) on free loopback ports, with fault helpers."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import grpc
from aetcd import rpc

from tests.helpers import free_port


class EtcdServer:
    """etcd on 127.0.0.1 with a temporary data directory; stop() and start() keep the data.

    With `certs` (a directory from tests.certs.make_certs), clients speak TLS and must show a
    certificate the CA signed (etcd's --client-cert-auth)."""

    def __init__(self, data_dir: Path, certs: Path | None = None) -> None:
        binary = shutil.which("etcd")
        if binary is None:
            raise RuntimeError("no etcd on PATH: install Debian's etcd-server (make test does)")
        self.binary = binary
        self.data_dir = data_dir
        self.client_port = free_port()
        self.peer_port = free_port()
        self.certs = certs
        scheme = "https" if certs is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.client_port}"
        self.log = data_dir.parent / f"etcd-{self.client_port}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        peer = f"http://127.0.0.1:{self.peer_port}"
        log = self.log.open("ab")
        self._proc = subprocess.Popen(
            [
                self.binary,
                "--name",
                "mesh-test",
                "--data-dir",
                str(self.data_dir),
                "--listen-client-urls",
                self.url,
                "--advertise-client-urls",
                self.url,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                f"mesh-test={peer}",
                "--log-level",
                "warn",
                *self._tls_flags(),
            ],
            stdout=log,
            stderr=log,
        )
        log.close()
        self._wait_ready()

    def _tls_flags(self) -> list[str]:
        if self.certs is None:
            return []
        c = self.certs
        return [
            "--cert-file", str(c / "server.crt"), "--key-file", str(c / "server.key"),
            "--trusted-ca-file", str(c / "ca.crt"), "--client-cert-auth",
        ]  # fmt: skip

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        target = f"127.0.0.1:{self.client_port}"
        if self.certs is None:
            channel = grpc.insecure_channel(target)
        else:
            c = self.certs
            credentials = grpc.ssl_channel_credentials(
                (c / "ca.crt").read_bytes(),
                (c / "client.key").read_bytes(),
                (c / "client.crt").read_bytes(),
            )
            channel = grpc.secure_channel(target, credentials)
        stub = rpc_sync_kv(channel)
        try:
            while time.monotonic() < deadline:
                if self._proc is not None and self._proc.poll() is not None:
                    raise RuntimeError(f"etcd exited: {self.log.read_text()[-2000:]}")
                try:
                    stub(rpc.RangeRequest(key=b"\0", count_only=True), timeout=1)
                    return
                except grpc.RpcError:
                    time.sleep(0.1)
            raise RuntimeError(f"etcd did not start: {self.log.read_text()[-2000:]}")
        finally:
            channel.close()

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        self._proc = None

    def pause(self) -> None:
        """SIGSTOP: etcd stalls with its connections open, as a hung or starved server does."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()


def rpc_sync_kv(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:  # type: ignore[type-arg]
    return channel.unary_unary(
        "/etcdserverpb.KV/Range",
        request_serializer=rpc.RangeRequest.SerializeToString,
        response_deserializer=rpc.RangeResponse.FromString,
    )
