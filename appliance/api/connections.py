"""What a connection costs the box, bounded: deadlines for the request's
head and body, and caps on connections per address and in all.

uvicorn has a keep-alive timeout but no deadline for a request's head: a
client that sends a header line now and then (slowloris) holds its
connection, and a file descriptor, forever; a thousand of them starve the
process of descriptors and every paired desktop times out. So the LAN API is
served through :class:`EdgeProtocol` (uvicorn's h11 protocol with a gate in
front, given to uvicorn as ``http=``):

* **Head deadline.** From the moment a connection is accepted (or a response
  ends on a kept-alive one), the TLS handshake, the request line and every
  header must arrive within ``head_s``; else the connection is closed (a 408
  on plain HTTP).
* **Body deadline.** Once the head is in, the whole body must arrive within
  ``body_s``. (While the broker works on a request nothing is timed here:
  long polls and event streams end on their own bounds.)
* **Caps.** At most ``per_peer`` connections from one address and ``total``
  in all. When an address is at its cap, a new connection from it takes the
  place of its connection that has waited longest for its request head,
  once that one has waited ``yield_after_s``; until then the newcomer is cut
  at once (a flood's newcomers cost an accept and a close, nothing more).
  When the box is at its total cap, a new connection takes the place of the
  connection, from any address, that has waited longest for its head: a
  slow or idle one, which is what an attacker holds. A desktop that sends its
  request promptly is never the one waiting longest, so connections from
  flooding addresses cannot lock out a paired desktop at another. Only when
  every connection concerned is busy with a request is the newcomer refused
  with a reason (a 503 on plain HTTP).

TLS is done here too (``loop.start_tls`` once a connection is admitted)
rather than by the event loop's server, so a connection is counted and timed
from its first byte, handshake included.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

LINGERING_MAX = 64  # refused connections answering 503 at once; beyond, cut at once


@dataclass(frozen=True)
class ConnectionLimits:
    head_s: float = 10.0  # TLS handshake, request line and headers
    body_s: float = 30.0  # the whole body, once the head is in
    per_peer: int = 32  # connections from one address at once
    total: int = 512  # connections at once (serve.py keeps it under half the fd limit)
    # A connection waiting this long for its head gives its place to a new
    # one from the same address (a prompt client sends its head in
    # milliseconds; a flood's newcomers are refused until then, cheaply).
    yield_after_s: float = 1.0


def peer_key(peername: Any) -> str:
    """The address a connection comes from (an IPv4-mapped IPv6 address as IPv4)."""
    if not isinstance(peername, tuple) or not peername:
        return "local"
    host = str(peername[0])
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


class Connections:
    """Every connection of one server: how many from each address, and which
    are waiting for their request head, oldest first."""

    def __init__(self, limits: ConnectionLimits):
        self.limits = limits
        self.by_peer: dict[str, int] = {}
        self.open = 0
        # Waiting for their request head, oldest first, with when they began.
        self._waiting: OrderedDict[EdgeProtocol, float] = OrderedDict()
        self._waiting_by_peer: dict[str, OrderedDict[EdgeProtocol, float]] = {}
        # What happened, for the tests and the log: refused, evicted, late.
        self.counts = {"admitted": 0, "refused": 0, "evicted": 0, "late_head": 0, "late_body": 0}
        self.lingering = 0  # refused connections answering 503 before they close

    def admit(self, conn: EdgeProtocol, peer: str) -> bool:
        """Count ``conn`` in, making room if a waiting connection can go."""
        if self.by_peer.get(peer, 0) >= self.limits.per_peer and not self._evict(
            self._waiting_by_peer.get(peer), self.limits.yield_after_s
        ):
            self.counts["refused"] += 1
            return False
        if self.open >= self.limits.total and not self._evict(self._waiting, 0.0):
            self.counts["refused"] += 1
            return False
        self.open += 1
        self.by_peer[peer] = self.by_peer.get(peer, 0) + 1
        self.counts["admitted"] += 1
        return True

    def _evict(self, waiting: OrderedDict[EdgeProtocol, float] | None, after_s: float) -> bool:
        """Close the connection in ``waiting`` that has waited longest, if it
        has waited ``after_s`` at least."""
        if not waiting:
            return False
        victim, since = next(iter(waiting.items()))
        if time.monotonic() - since < after_s:
            return False
        self.counts["evicted"] += 1
        victim.drop()
        return True

    def release(self, conn: EdgeProtocol, peer: str) -> None:
        self.wait(conn, peer, False)
        self.open -= 1
        left = self.by_peer[peer] - 1
        if left:
            self.by_peer[peer] = left
        else:
            del self.by_peer[peer]

    def wait(self, conn: EdgeProtocol, peer: str, waiting: bool) -> None:
        """Mark ``conn`` as waiting for its request head (or not)."""
        mine = self._waiting_by_peer.setdefault(peer, OrderedDict())
        if waiting:
            self._waiting[conn] = mine[conn] = time.monotonic()
        else:
            self._waiting.pop(conn, None)
            mine.pop(conn, None)
        if not mine:
            del self._waiting_by_peer[peer]

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def waiting_from(self, peer: str) -> int:
        return len(self._waiting_by_peer.get(peer, ()))


def _raw_response(status: int, phrase: str, code: str, reason: str) -> bytes:
    body = json.dumps({"code": code, "reason": reason}).encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class EdgeProtocol(H11Protocol):
    """uvicorn's h11 protocol behind the gate: admission, TLS, deadlines.

    :func:`protocol` makes a subclass bound to one server's
    :class:`Connections` and TLS context."""

    table: Connections
    tls: ssl.SSLContext | None = None

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        # uvicorn's own state (an h11 connection, loggers) is made only once
        # a connection is admitted (_start): a flood of refused connections
        # costs the box as little as it can.
        self._uvicorn = (config, server_state, app_state, _loop)
        self.loop = _loop or asyncio.get_event_loop()
        self._peer: str | None = None  # set while counted in the table
        self._raw: asyncio.Transport | None = None  # before TLS is up
        self._phase: str | None = None  # "head", "body" or None (the broker's turn)
        self._timer: asyncio.TimerHandle | None = None
        self._started = False  # uvicorn's own connection_made ran
        self._lingering = False  # refused, answering 503 before it closes
        # Bytes TLS decrypted before the handshake's await returned to us
        # (the request can come in the same read as the client's Finished).
        self._early: list[bytes] = []

    # -- the connection's life ------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._raw = transport
        peer = peer_key(transport.get_extra_info("peername"))
        if not self.table.admit(self, peer):
            self._refuse(transport, peer)
            return
        self._peer = peer
        self._enter("head")
        if self.tls is None:
            self._start(transport)
        else:
            # Not a byte for h11 before TLS is up: the handshake reads them.
            transport.pause_reading()
            self.loop.create_task(self._handshake(transport, self.tls))

    async def _handshake(self, raw: asyncio.Transport, context: ssl.SSLContext) -> None:
        try:
            tls = await self.loop.start_tls(
                raw, self, context, server_side=True, ssl_handshake_timeout=self.table.limits.head_s
            )
        except Exception:  # noqa: BLE001 - any failed handshake just ends the connection
            tls = None
        if tls is None or self._peer is None:  # failed, or dropped meanwhile
            if tls is not None:
                tls.abort()
            self._release()
            return
        self._start(tls)

    def _start(self, transport: asyncio.Transport) -> None:
        self._raw = None
        self._started = True
        super().__init__(*self._uvicorn)
        super().connection_made(transport)
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)
        self._watch()

    def _refuse(self, transport: asyncio.Transport, peer: str) -> None:
        """No room for ``peer``. A flood (it has connections still waiting
        for their heads) is cut at once. A client whose every connection is
        busy with a request is told so on plain HTTP, and the connection
        closed once its request has been read (so the answer is not lost to a
        reset) or after a second; a few such answers at a time, at most."""
        table = self.table
        if self.tls is not None or table.waiting_from(peer) or table.lingering >= LINGERING_MAX:
            transport.abort()
            return
        table.lingering += 1
        self._lingering = True
        transport.write(
            _raw_response(
                503,
                "Service Unavailable",
                "too_many_connections",
                f"every connection {peer} may hold is busy with a request; try again shortly",
            )
        )
        transport.write_eof()
        self._timer = self.loop.call_later(1.0, transport.abort)

    def pause_writing(self) -> None:
        if self._started:
            super().pause_writing()

    def resume_writing(self) -> None:
        if self._started:
            super().resume_writing()

    def eof_received(self) -> None:
        if self._raw is not None and self._peer is None:  # refused: the client is done
            self._raw.abort()
        super().eof_received()

    def data_received(self, data: bytes) -> None:
        if not self._started:
            if self._peer is not None and self.tls is not None:
                self._early.append(data)  # decrypted already; h11 gets it in _start
            return  # else a refused connection's request: dropped
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lingering:
            self._lingering = False
            self.table.lingering -= 1
        self._release()
        if self._started:
            super().connection_lost(exc)

    # -- deadlines ------------------------------------------------------
    def _watch(self) -> None:
        """Time the request's head or body, whichever the client owes now."""
        if self._peer is None or self.transport.is_closing():
            return
        state = self.conn.their_state
        phase = "head" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
        if phase != self._phase:
            self._enter(phase)

    def _enter(self, phase: str | None) -> None:
        assert self._peer is not None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._phase = phase
        self.table.wait(self, self._peer, phase == "head")
        if phase is not None:
            limits = self.table.limits
            seconds = limits.head_s if phase == "head" else limits.body_s
            self._timer = self.loop.call_later(seconds, self._late, phase)

    def _late(self, phase: str) -> None:
        self._timer = None
        if self._peer is None:
            return
        self.table.counts[f"late_{phase}"] += 1
        seconds = self.table.limits.head_s if phase == "head" else self.table.limits.body_s
        what = "request line and headers" if phase == "head" else "request body"
        # A clear answer where one can be given: plain HTTP, nothing sent yet.
        if (
            phase == "head"
            and self._started
            and self.tls is None
            and self.conn.our_state is h11.IDLE
        ):
            self._release()
            self.transport.write(
                _raw_response(
                    408,
                    "Request Timeout",
                    "request_timeout",
                    f"the {what} must arrive within {seconds:g} s of the connection's turn",
                )
            )
            self.transport.close()
        else:
            self.drop()

    # -- leaving --------------------------------------------------------
    def drop(self) -> None:
        """Close at once (a connection evicted or late): uncounted now, so
        its place is free before the socket is."""
        self._release()
        if self._raw is not None:
            self._raw.abort()
        elif self._started:
            self.transport.abort()

    def _release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._peer is not None:
            self.table.release(self, self._peer)
            self._peer = None


def protocol(limits: ConnectionLimits, tls: ssl.SSLContext | None = None) -> type[EdgeProtocol]:
    """A protocol class for one server (its own connection table)."""
    bound: type[EdgeProtocol] = type(
        "BoundEdgeProtocol", (EdgeProtocol,), {"table": Connections(limits), "tls": tls}
    )
    return bound


def server_config(
    app: Any,
    *,
    host: str,
    port: int,
    limits: ConnectionLimits,
    tls: ssl.SSLContext | None = None,
    log_level: str = "warning",
) -> uvicorn.Config:
    """The uvicorn configuration the box serves with (``appliance up`` and the tests)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol(limits, tls),
        log_level=log_level,
        timeout_keep_alive=5,  # an idle kept-alive connection closes after this
    )


def tls_context(certfile: str, keyfile: str, password: str | None = None) -> ssl.SSLContext:
    """The server's TLS context: TLS 1.2 or newer, the device certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile, password)
    return context
