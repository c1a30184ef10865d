"""Connections as an attacker holds them: heads and bodies that never end
(slowloris), floods of connections from one address or many, a TLS
handshake that never starts. The box's connection gate
(appliance/api/connections.py) in front of a small app, with short limits so
each deadline passes in a second; the slowloris against the real box is in
test_slowloris.py."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.api.connections import (
    ConnectionLimits,
    Connections,
    peer_key,
    server_config,
    tls_context,
)
from appliance.api.tls import ensure_certificate
from appliance.serve import connection_limits
from tests.adversarial.conftest import REPO

LIMITS = ConnectionLimits(head_s=0.6, body_s=0.6, per_peer=4, total=8, yield_after_s=0.3)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers at once; /slow after a second (a request the box is busy with)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    while (await receive()).get("more_body"):
        pass
    if scope["path"] == "/slow":
        await asyncio.sleep(1.0)
    body = f"ok {scope['client'][0]}".encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Served:
    """The gate and ``app`` on a loopback port, in a thread."""

    def __init__(self, limits: ConnectionLimits, tls: ssl.SSLContext | None = None):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        import uvicorn

        config = server_config(app, host="127.0.0.1", port=self.port, limits=limits, tls=tls)
        self.table: Connections = config.http.table  # type: ignore[union-attr]
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)

    def connect(self, source: str = "127.0.0.1") -> socket.socket:
        s = socket.socket()
        s.bind((source, 0))
        s.settimeout(5)
        s.connect(("127.0.0.1", self.port))
        return s

    def get(self, source: str = "127.0.0.1", path: str = "/") -> bytes:
        with self.connect(source) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: box\r\nConnection: close\r\n\r\n".encode())
            return read_all(s)

    def settle(self, check: Any) -> None:
        """Wait (up to 3 s) until ``check()`` holds on the server's side."""
        deadline = time.monotonic() + 3
        while not check():
            assert time.monotonic() < deadline, self.table.counts
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def read_all(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def closed_within(s: socket.socket, seconds: float) -> tuple[bytes, float]:
    """What the server sent before closing ``s``, and when it closed."""
    start = time.monotonic()
    s.settimeout(seconds)
    try:
        data = read_all(s)
    except ConnectionResetError:
        data = b""
    return data, time.monotonic() - start


@pytest.fixture
def served() -> Iterator[Served]:
    s = Served(LIMITS)
    yield s
    s.stop()


# ------------------------------------------------------------------ deadlines
def test_a_head_that_never_ends_is_cut_off_with_408(served: Served) -> None:
    s = served.connect()
    s.sendall(b"GET / HTTP/1.1\r\nHost: box\r\nX-Slow: 1\r\n")
    for _ in range(3):  # a header line now and then does not buy time
        time.sleep(0.15)
        s.sendall(b"X-More: 1\r\n")
    data, took = closed_within(s, 5)
    assert data.startswith(b"HTTP/1.1 408 ") and b'"request_timeout"' in data
    assert took < 2.0
    assert served.table.counts["late_head"] == 1
    served.settle(lambda: served.table.open == 0)


def test_a_silent_connection_is_closed(served: Served) -> None:
    s = served.connect()
    data, took = closed_within(s, 5)
    assert data.startswith(b"HTTP/1.1 408 ") and took < 2.0


def test_a_body_that_never_ends_is_cut_off(served: Served) -> None:
    s = served.connect()
    s.sendall(b"POST / HTTP/1.1\r\nHost: box\r\nContent-Length: 100\r\n\r\n0123456789")
    data, took = closed_within(s, 5)
    assert b"200" not in data and took < 2.0  # the app never got its body
    assert served.table.counts["late_body"] == 1


def test_a_kept_alive_connection_owes_its_next_head_in_time(served: Served) -> None:
    s = served.connect()
    s.sendall(b"GET / HTTP/1.1\r\nHost: box\r\n\r\n")
    first = b""
    while not first.endswith(b"ok 127.0.0.1"):
        first += s.recv(65536)
    assert first.startswith(b"HTTP/1.1 200 ")
    s.sendall(b"GET / HTTP/1.1\r\nHost: box\r\n")  # and then nothing
    data, took = closed_within(s, 5)
    assert data.startswith(b"HTTP/1.1 408 ") and took < 2.0


def test_a_prompt_request_is_answered(served: Served) -> None:
    assert served.get().startswith(b"HTTP/1.1 200 ")
    served.settle(lambda: served.table.open == 0 and served.table.waiting == 0)


@pytest.fixture
def tls(tmp_path: Path) -> ssl.SSLContext:
    cert, key, _ = ensure_certificate(tmp_path / "tls", ["127.0.0.1"])
    return tls_context(str(cert), str(key))


def test_a_tls_handshake_counts_against_the_head_deadline(tls: ssl.SSLContext) -> None:
    served = Served(LIMITS, tls=tls)
    try:
        silent = served.connect()  # a TCP connection that never says hello
        client = ssl.create_default_context()
        client.check_hostname = False
        client.verify_mode = ssl.CERT_NONE
        with client.wrap_socket(served.connect(), server_hostname="box") as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: box\r\nConnection: close\r\n\r\n")
            answer = s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 ")  # TLS itself works
        data, took = closed_within(silent, 5)
        assert data == b"" and took < 2.0
        served.settle(lambda: served.table.open == 0)
    finally:
        served.stop()


def one_flight_tls_request(served: Served, request: bytes) -> bytes:
    """A TLS client that sends its request in the same write as the end of
    its handshake (as HTTP clients do): the gate must not lose it."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="box")
    with served.connect() as sock:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        tls.write(request)
        sock.sendall(outgoing.read())  # the client's Finished and the request, at once
        answer = b""
        while not answer.endswith(b"ok 127.0.0.1"):
            try:
                answer += tls.read(65536)
            except ssl.SSLWantReadError:
                data = sock.recv(65536)
                if not data:
                    break
                incoming.write(data)
        return answer


def test_a_request_in_the_same_flight_as_the_handshake_is_answered(tls: ssl.SSLContext) -> None:
    served = Served(LIMITS, tls=tls)
    try:
        for _ in range(3):
            answer = one_flight_tls_request(served, b"GET / HTTP/1.1\r\nHost: box\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 200 "), answer
    finally:
        served.stop()


# ------------------------------------------------------------------ caps
def test_one_address_holds_at_most_its_share(served: Served) -> None:
    held = [served.connect() for _ in range(LIMITS.per_peer)]
    served.settle(lambda: served.table.open == LIMITS.per_peer)
    time.sleep(LIMITS.yield_after_s + 0.1)
    flood = [served.connect() for _ in range(16)]
    served.settle(lambda: served.table.counts["admitted"] + served.table.counts["refused"] == 20)
    assert served.table.by_peer == {"127.0.0.1": LIMITS.per_peer}
    # The connections that had waited longest gave their places to newcomers;
    # newcomers past that were cut at once (no answer: the address floods).
    counts = served.table.counts
    assert counts["evicted"] >= LIMITS.per_peer and counts["evicted"] + counts["refused"] == 16
    for s in held:
        assert closed_within(s, 2)[0] == b""
    assert closed_within(flood[-1], 2)[0] == b""
    # Another address is answered at once.
    start = time.monotonic()
    answer = served.get("127.0.0.2")
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"ok 127.0.0.2")
    assert time.monotonic() - start < 1.0


def test_a_flood_of_new_connections_is_cut_at_once() -> None:
    served = Served(ConnectionLimits(head_s=5, body_s=5, per_peer=4, total=8, yield_after_s=5))
    try:
        held = [served.connect() for _ in range(LIMITS.per_peer)]
        served.settle(lambda: served.table.open == LIMITS.per_peer)
        flood = [served.connect() for _ in range(10)]
        served.settle(lambda: served.table.counts["refused"] == 10)
        # The first four keep their places (they have not waited long), the
        # ten are closed without an answer and hold nothing.
        assert served.table.counts["evicted"] == 0 and served.table.lingering == 0
        for s in flood:
            assert closed_within(s, 2)[0] == b""
        held[0].sendall(b"GET / HTTP/1.1\r\nHost: box\r\nConnection: close\r\n\r\n")
        assert read_all(held[0]).startswith(b"HTTP/1.1 200 ")
    finally:
        served.stop()


def test_many_addresses_cannot_fill_the_box_against_a_prompt_client(served: Served) -> None:
    # Idle connections from four addresses fill the total cap ...
    idle = [served.connect(f"127.0.0.{10 + i % 4}") for i in range(LIMITS.total)]
    served.settle(lambda: served.table.open == LIMITS.total)
    # ... and a desktop at another address still gets in: the connection
    # that waited longest for its head makes room.
    answer = served.get("127.0.0.2")
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"ok 127.0.0.2")
    assert served.table.counts["evicted"] >= 1
    data, _ = closed_within(idle[0], 2)
    assert data == b""
    assert served.table.open <= LIMITS.total


def test_busy_connections_are_never_evicted(served: Served) -> None:
    busy = []
    for _ in range(LIMITS.per_peer):
        s = served.connect()
        s.sendall(b"GET /slow HTTP/1.1\r\nHost: box\r\nConnection: close\r\n\r\n")
        busy.append(s)
    served.settle(lambda: served.table.waiting == 0 and served.table.open == LIMITS.per_peer)
    # All of this address's connections are in the box's hands: a fifth is
    # refused with a reason, and the four are answered in full.
    refused = served.get()
    assert refused.startswith(b"HTTP/1.1 503 ") and b'"too_many_connections"' in refused
    for s in busy:
        assert read_all(s).startswith(b"HTTP/1.1 200 ")
    assert served.table.counts["refused"] == 1 and served.table.counts["evicted"] == 0


# ------------------------------------------------------------------ the numbers
def test_peer_addresses() -> None:
    assert peer_key(("::ffff:192.168.1.7", 5000, 0, 0)) == "192.168.1.7"
    assert peer_key(("fe80::1%eth0", 5000, 0, 2)) == "fe80::1"
    assert peer_key(("192.168.1.7", 5000)) == "192.168.1.7"
    assert peer_key(None) == "local"


def test_caps_stay_under_half_the_descriptor_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        limits = connection_limits()
        assert limits.total == 128 and limits.per_peer <= 128
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert connection_limits().total == ConnectionLimits().total  # 512 under the unit's 4096


def test_the_unit_gives_the_broker_room_for_its_connections() -> None:
    unit = (REPO / "deploy/systemd/appliance-broker.service").read_text()
    (line,) = [x for x in unit.splitlines() if x.startswith("LimitNOFILE=")]
    assert int(line.split("=", 1)[1]) >= 2 * ConnectionLimits().total
