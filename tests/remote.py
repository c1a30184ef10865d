"""A host on the LAN that is not the box: an HTTP endpoint in a network
namespace of its own, reached over a veth pair. A plugin may never reach the
box's own addresses (loopback included), so the tests that let a plugin call
a home-automation hub put the hub here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.tools import require

# Records each request (method, path, body) as one JSON line on stdout.
SERVER = r"""
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def answer(self):
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n).decode() if n else None
        print(json.dumps({"method": self.command, "path": self.path, "body": body,
                          "host": self.headers.get("host")}), flush=True)
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    do_GET = do_POST = do_PUT = answer
    def log_message(self, *args):
        pass

server = ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Handler)
print("ready", flush=True)
server.serve_forever()
"""


class RemoteHub:
    """What the hub was sent: ``received`` (path, and body parsed when JSON)."""

    def __init__(self, proc: subprocess.Popen[str], origin: str) -> None:
        self.proc = proc
        self.origin = origin
        self.received: list[dict[str, Any]] = []
        self.hosts: list[str] = []  # the Host header of each request
        self.box_address = ""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            seen = json.loads(line)
            body = seen["body"]
            if body and body[:1] in "{[":
                body = json.loads(body)
            self.received.append({"path": seen["path"], "body": body})
            self.hosts.append(seen["host"])


def _run(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 0, f"{argv}: {proc.stderr}"


@contextmanager
def remote_hub(port: int = 8123) -> Iterator[RemoteHub]:
    require("ip", package="iproute2")
    if os.geteuid() != 0:
        pytest.fail("a host on another network namespace needs root (as `make test` runs)")
    tag = uuid.uuid4().hex[:6]
    name, near, far = f"appl-hub-{tag}", f"vh{tag}", f"vf{tag}"
    octet = int(tag[:2], 16) % 250 + 1
    box_ip, hub_ip = f"10.231.{octet}.1", f"10.231.{octet}.2"
    _run("ip", "netns", "add", name)
    proc = None
    try:
        _run("ip", "link", "add", near, "type", "veth", "peer", "name", far, "netns", name)
        _run("ip", "addr", "add", f"{box_ip}/30", "dev", near)
        _run("ip", "link", "set", near, "up")
        _run("ip", "-n", name, "addr", "add", f"{hub_ip}/30", "dev", far)
        _run("ip", "-n", name, "link", "set", far, "up")
        _run("ip", "-n", name, "link", "set", "lo", "up")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", name, sys.executable, "-c", SERVER, hub_ip, str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        hub = RemoteHub(proc, f"http://{hub_ip}:{port}")
        hub.box_address = box_ip  # the box's own end of the link
        yield hub
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        subprocess.run(["ip", "link", "del", near], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
