"""The agent socket's protocol: one JSON request line, one JSON response line,
per connection.

    {"op": "plan", "text": ..., "listing": {share: [names]}}
        -> {"ok": true, "result": PlanResult}
    {"op": "extract", "content": ..., "fields": {name: "integer"|"string"|"date"}}
        -> {"ok": true, "result": {"values": {...}, "model_id", "model_sha256", ...}}
    {"op": "health"}
        -> {"ok": true, "result": {"model_id", "model_sha256", "backend", "pid"}}
    any error
        -> {"ok": false, "error": {"code", "reason"}}
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any, NamedTuple

MAX_REQUEST = 4 << 20  # a listing of thousands of names, or a document to extract from
MAX_RESPONSE = 1 << 20


class Peer(NamedTuple):
    pid: int
    uid: int
    gid: int


def peer_of(sock: socket.socket) -> Peer:
    """The other end's credentials, from the kernel (SO_PEERCRED): for a
    connected socket, the process that called connect(); seen from the
    client, the process that called listen()."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return Peer(*struct.unpack("3i", raw))


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


class TooLarge(Exception):
    pass


def read_line(sock: socket.socket, limit: int) -> bytes | None:
    """Bytes up to the first newline; None on EOF before one. The socket's
    timeout applies to each recv (callers shrink it towards a deadline)."""
    buf = bytearray()
    while True:
        i = buf.find(b"\n")
        if i != -1:
            return bytes(buf[:i])
        if len(buf) > limit:
            raise TooLarge(f"over {limit} bytes")
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk
