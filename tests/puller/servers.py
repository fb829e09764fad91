"""Servers the puller tests fetch from: moto's S3 in its own process, and an HTTP server in a
thread whose every request can be scripted to fail (status, cut connection, changed object)."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.helpers import free_port


class MotoServer:
    """moto's S3 (and IAM) on a free loopback port, as its own process."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        script = Path(sys.executable).parent / "moto_server"
        cmd = [str(script)] if script.exists() else [sys.executable, "-m", "moto.server"]
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen(
                [*cmd, "-H", "127.0.0.1", "-p", str(self.port)], stdout=out, stderr=out
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto_server exited: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"moto_server did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        self._proc = None

    def client(self, service: str = "s3") -> Any:
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def require_auth(self, on: bool) -> None:
        """moto checks signatures and IAM policies from now on (or stops checking)."""
        request = urllib.request.Request(
            f"{self.url}/moto-api/reset-auth",
            data=b"0" if on else b"inf",
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            json.loads(response.read())


@dataclass
class Fault:
    """What one request gets instead of a plain answer.

    kind: "status" (answer `status`, body echoing the request's Authorization header),
    "cut" (send `after` bytes of the body, then drop the connection), "replace" (answer from
    the object as it is, then replace it with `data`).
    """

    kind: str
    status: int = 500
    after: int = 0
    data: bytes = b""
    method: str = "GET"


@dataclass
class Seen:
    method: str
    path: str
    range: str | None
    authorization: str | None = None
    fault: str | None = None  # the fault this request got ("status 403", "cut", ...), if any


@dataclass
class _State:
    objects: dict[str, bytes] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    ranges: bool = True
    etags: bool = True
    # Called before each GET is answered (e.g. to change the object every time).
    before_get: Callable[[str], None] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class FaultServer:
    """HTTP on loopback serving objects from memory; faults are consumed in order. With `tls`
    (a certificate file and its key), HTTPS."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.state = _State()
        state = self.state

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _answer(self, body: bool) -> None:
                with state.lock:
                    fault = None
                    for i, f in enumerate(state.faults):
                        if f.method == self.command:
                            fault = state.faults.pop(i)
                            break
                    fired = None
                    if fault is not None:
                        fired = (
                            f"{fault.kind} {fault.status}" if fault.kind == "status" else fault.kind
                        )
                    state.seen.append(
                        Seen(
                            self.command,
                            self.path,
                            self.headers.get("Range"),
                            self.headers.get("Authorization"),
                            fired,
                        )
                    )
                if body and state.before_get is not None:
                    state.before_get(self.path)
                if fault is not None and fault.kind == "status":
                    text = f"failed; you sent {self.headers.get('Authorization')}".encode()
                    self.send_response(fault.status)
                    self.send_header("Content-Length", str(len(text) if body else 0))
                    self.end_headers()
                    if body:
                        self.wfile.write(text)
                    return
                with state.lock:
                    data = state.objects.get(self.path)
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start, end, status = 0, len(data), 200
                wanted = self.headers.get("Range")
                if wanted and state.ranges and body:
                    match = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted)
                    assert match, wanted
                    start = int(match.group(1))
                    end = min(int(match.group(2)) + 1 if match.group(2) else len(data), len(data))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                self.send_response(status)
                if state.etags:
                    self.send_header("ETag", f'"{hashlib.md5(data).hexdigest()}"')
                self.send_header("Last-Modified", formatdate(0, usegmt=True))
                self.send_header("Content-Length", str(end - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
                self.end_headers()
                if not body:
                    return
                chunk = data[start:end]
                if fault is not None and fault.kind == "cut":
                    self.wfile.write(chunk[: fault.after])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(chunk)
                if fault is not None and fault.kind == "replace":
                    with state.lock:
                        state.objects[self.path] = fault.data

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # clients that hang up (a cancelled range) are expected here

        self._server = Server(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> FaultServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def put(self, path: str, data: bytes) -> None:
        with self.state.lock:
            self.state.objects["/" + path.lstrip("/")] = data

    def fail(self, *faults: Fault) -> None:
        with self.state.lock:
            self.state.faults.extend(faults)

    def fired(self) -> list[str]:
        """The faults that were served, in order, as "METHOD kind [status]"."""
        with self.state.lock:
            return [f"{s.method} {s.fault}" for s in self.state.seen if s.fault is not None]

    def pending(self) -> list[Fault]:
        with self.state.lock:
            return list(self.state.faults)

    def gets(self, path: str) -> list[Seen]:
        with self.state.lock:
            return [s for s in self.state.seen if s.method == "GET" and s.path == "/" + path]
