"""The agent process's side of the socket.

The agent is unprivileged and has no network: its only channel is this Unix
socket, created with mode 0660 (no window in which it is wider: the umask is
set around bind), and only a peer whose SO_PEERCRED uid is the broker's is
answered. It serves one request at a time, because the model is
single-threaded; other connections wait in the listen backlog. It holds no
keys and no tokens: its answers are proposals that the broker validates,
scopes, decides by policy and, where needed, puts behind the button.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import threading
from pathlib import Path
from typing import Any

from appliance.agent.planner import Planner
from appliance.agent.protocol import MAX_REQUEST, TooLarge, encode, peer_of, read_line
from appliance.errors import ApplianceError

log = logging.getLogger("appliance.agent")

READ_TIMEOUT_S = 10.0  # a peer that connects must send its request this fast


def listen(path: Path) -> socket.socket:
    """The agent's listening socket at ``path``, mode 0660 from its first
    moment. A stale socket from a previous run is replaced; anything else
    there is refused."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise ApplianceError(
                f"{path} exists and is not a socket; not replacing it",
                code="agent_socket",
                status=500,
            )
        os.unlink(path)  # a stale socket from a previous run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The socket file is created by bind() with the umask applied: set it
    # so the file is 0660 from its first moment (the agent process is
    # single-threaded while it binds).
    old = os.umask(0o117)
    try:
        sock.bind(str(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    os.chmod(path, 0o660)
    sock.listen(16)
    sock.settimeout(0.2)  # accept() wakes up to notice stop()
    return sock


def unlisten(sock: socket.socket, path: Path) -> None:
    """Close the listening socket and remove its file (if it is a socket)."""
    sock.close()
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


class AgentServer:
    def __init__(
        self,
        socket_path: Path,
        planner: Planner,
        *,
        broker_uid: int | None,
        sock: socket.socket | None = None,
    ):
        """``sock``: the socket :func:`listen` made already (the agent binds
        before it loads its model, so that a request sent meanwhile waits in
        the backlog instead of finding nothing there)."""
        self.socket_path = Path(socket_path)
        self.planner = planner
        # None: the broker runs as our own user (development).
        self.broker_uid = os.getuid() if broker_uid is None else broker_uid
        self._sock: socket.socket | None = sock
        self._stop = threading.Event()
        self.served = 0
        self.refused = 0

    # -------------------------------------------------------------- socket
    def bind(self) -> None:
        self._sock = listen(self.socket_path)

    def serve_forever(self) -> None:
        if self._sock is None:
            self.bind()
        assert self._sock is not None
        log.info("agent listening on %s (broker uid %d)", self.socket_path, self.broker_uid)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    break
                raise
            with conn:
                self.handle(conn)

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.stop()
        sock, self._sock = self._sock, None
        if sock is not None:
            unlisten(sock, self.socket_path)

    def serve_in_thread(self) -> threading.Thread:
        """Bind now, serve in a daemon thread (tests, benchmarks)."""
        self.bind()
        t = threading.Thread(target=self.serve_forever, daemon=True, name="agent-server")
        t.start()
        return t

    # -------------------------------------------------------------- requests
    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(READ_TIMEOUT_S)
        try:
            peer = peer_of(conn)
            if peer.uid != self.broker_uid:
                self.refused += 1
                log.warning("refused a peer: pid %d uid %d", peer.pid, peer.uid)
                self._send(conn, _error("forbidden_peer", f"uid {peer.uid} may not use the agent"))
                return
            try:
                line = read_line(conn, MAX_REQUEST)
            except TooLarge:
                self._send(conn, _error("too_large", f"requests are at most {MAX_REQUEST} bytes"))
                return
            except TimeoutError:
                return
            if line is None:
                return
            if _hung_up(conn):
                # It gave up waiting (its deadline passed while the agent
                # started or planned something else): do not plan for no one.
                log.info("the peer left before its turn: not answering")
                return
            self._send(conn, self.answer(line))
            self.served += 1
        except OSError as e:  # the peer went away: nothing to answer
            log.info("connection dropped: %s", e)

    def answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except ValueError:
            return _error("bad_request", "the request is not JSON")
        if not isinstance(request, dict):
            return _error("bad_request", "the request must be a JSON object")
        op = request.get("op")
        try:
            if op == "plan":
                text, listing = request.get("text"), request.get("listing")
                if not isinstance(text, str) or not isinstance(listing, dict):
                    return _error("bad_request", "a plan needs its text and a listing")
                result = self.planner.plan(text, listing)
                return {"ok": True, "result": result.to_dict()}
            if op == "extract":
                content, fields = request.get("content"), request.get("fields")
                if not isinstance(content, str) or not isinstance(fields, dict):
                    return _error("bad_request", "an extraction needs content and fields")
                values = self.planner.extract(content, fields)
                return {"ok": True, "result": values}
            if op == "health":
                backend = self.planner.backend
                return {
                    "ok": True,
                    "result": {
                        "model_id": backend.model_id,
                        "model_sha256": backend.model_sha256,
                        "backend": type(backend).__name__,
                        "pid": os.getpid(),
                        "served": self.served,
                    },
                }
            return _error("bad_request", f"unknown op {op!r} (plan, extract, health)")
        except ApplianceError as e:
            return {"ok": False, "error": e.to_dict()}
        except Exception as e:  # noqa: BLE001 - a bug answers an error, never a half-plan
            log.exception("request failed")
            return _error("internal", f"internal error in the agent: {type(e).__name__}")

    @staticmethod
    def _send(conn: socket.socket, message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            conn.sendall(encode(message))


def _hung_up(conn: socket.socket) -> bool:
    """Has the peer closed the connection (nothing more to read, at its end)?"""
    timeout = conn.gettimeout()
    conn.setblocking(False)  # a look, not a wait
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except (BlockingIOError, InterruptedError):
        return False  # still there, waiting for the answer
    except OSError:
        return True
    finally:
        conn.settimeout(timeout)


def _error(code: str, reason: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "reason": reason}}
