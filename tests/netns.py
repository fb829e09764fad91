"""Network namespaces for partition tests: each process in a namespace of its own, all joined
by a bridge in a switch namespace, the test process too; a cut is a pair of `prohibit` routes.

    with Network() as net:
        etcd_ip = net.add("etcd")
        proc = net.popen("etcd", ["etcd", ...])
        net.cut("pod", "etcd")      # packets between them are refused, both ways
        net.heal("pod", "etcd")
        net.blackhole("pod", "router")  # the pod's packets to the router vanish, unanswered
        net.unblackhole("pod", "router")

Needs root and `ip` (iproute2). `Network.available()` says whether this machine allows it.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from typing import Any

_ids = itertools.count()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Network:
    def __init__(self) -> None:
        self.tag = f"{os.getpid() % 10000}{next(_ids)}"
        self.switch = f"msw{self.tag}"
        self._subnet = f"10.{200 + int(self.tag) % 50}.{int(self.tag) // 50 % 250}"
        self.ips: dict[str, str] = {}
        self._namespaces: list[str] = []
        self._host_link = ""

    @staticmethod
    def available() -> tuple[bool, str]:
        probe = f"mprobe{os.getpid()}"
        try:
            _ip("netns", "add", probe)
            _ip("netns", "del", probe)
            return True, ""
        except (OSError, subprocess.CalledProcessError) as exc:
            return False, str(getattr(exc, "stderr", b"") or exc)

    def __enter__(self) -> Network:
        _ip("netns", "add", self.switch)
        self._namespaces.append(self.switch)
        self._in(self.switch, "link", "add", "br0", "type", "bridge")
        self._in(self.switch, "link", "set", "br0", "up")
        # The test process's side: a veth from the host namespace into the bridge.
        host = f"mh{self.tag}"
        self._plug(host, host_side=True)
        self.ips["host"] = f"{self._subnet}.1"
        _ip("addr", "add", f"{self.ips['host']}/24", "dev", host)
        _ip("link", "set", host, "up")
        self._host_link = host
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._host_link:
            subprocess.run(["ip", "link", "del", self._host_link], capture_output=True)
            self._host_link = ""
        for ns in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._namespaces.clear()

    def _in(self, ns: str, *args: str) -> None:
        _ip("netns", "exec", ns, "ip", *args)

    def _plug(self, name: str, host_side: bool = False) -> None:
        """A veth pair: `name` stays (in the host or its namespace), its peer joins the bridge."""
        peer = f"{name}b"
        _ip("link", "add", name, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", self.switch)
        self._in(self.switch, "link", "set", peer, "master", "br0")
        self._in(self.switch, "link", "set", peer, "up")

    def ns(self, name: str) -> str:
        return f"m{name}{self.tag}"[:15]

    def add(self, name: str) -> str:
        """A namespace for `name` on the bridge; its address."""
        ns = self.ns(name)
        _ip("netns", "add", ns)
        self._namespaces.append(ns)
        link = f"v{len(self.ips)}{self.tag}"[:13]
        self._plug(link)
        _ip("link", "set", link, "netns", ns)
        ip = f"{self._subnet}.{len(self.ips) + 1}"
        self._in(ns, "addr", "add", f"{ip}/24", "dev", link)
        self._in(ns, "link", "set", link, "up")
        self._in(ns, "link", "set", "lo", "up")
        self.ips[name] = ip
        return ip

    def popen(self, name: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["ip", "netns", "exec", self.ns(name), *argv], **kwargs)

    def _route(self, action: str, a: str, b: str) -> None:
        for src, dst in ((a, b), (b, a)):
            args = ("route", action, "prohibit", f"{self.ips[dst]}/32")
            if src == "host":
                _ip(*args)
            else:
                self._in(self.ns(src), *args)

    def cut(self, a: str, b: str) -> None:
        """No packet between `a` and `b`, either way (connections see errors, not silence)."""
        self._route("add", a, b)

    def heal(self, a: str, b: str) -> None:
        self._route("del", a, b)

    def _blackhole(self, action: str, src: str, dst: str) -> None:
        args = ("route", action, "blackhole", f"{self.ips[dst]}/32")
        if src == "host":
            _ip(*args)
        else:
            self._in(self.ns(src), *args)

    def blackhole(self, src: str, dst: str) -> None:
        """`src`'s packets to `dst` are dropped in `src`'s namespace. Seen from `dst`, `src`
        receives what it is sent and never answers, not even a TCP ack: silence, not an error
        (only `src`'s own sends fail, and it tells no one)."""
        self._blackhole("add", src, dst)

    def unblackhole(self, src: str, dst: str) -> None:
        self._blackhole("del", src, dst)
