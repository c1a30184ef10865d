"""The local control socket: how the ``appliance`` CLI reaches the running broker.

A Unix stream socket in the broker's state directory. One connection carries
one request line (a JSON object ``{"op": "...", ...arguments}``) and gets one
response line: ``{"ok": true, "result": {...}}`` or ``{"ok": false, "error":
{"code", "reason", "status"}}``. The handler is generic (dict -> dict): the
broker routes the ops (panel approve/deny/show, status, clients...).

Who may talk to it, since ``panel approve`` is on it:

* the socket file is mode 0600 from the moment it exists: it is bound inside
  a fresh 0700 directory, chmodded, then renamed into place, so there is no
  window in which another user could connect (this avoids changing the
  process-wide umask, which other threads would feel);
* each peer's uid is read with ``SO_PEERCRED`` and refused unless it is the
  broker's own uid or root, in case the file mode is ever loosened;
* a request line is capped (64 KiB by default), a slow peer times out, and
  the number of connections served at once is bounded.

Errors reach the client as ``code``/``reason``; an unexpected exception in
the handler is logged here and the client sees only a generic error.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import select
import socket
import stat
import struct
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError, Unavailable

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 * 1024
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
PEER_TIMEOUT_S = 5.0  # a connected peer must send its line within this
MAX_CONNECTIONS = 16
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes including the NUL


class BrokerNotRunning(Unavailable):
    """Nothing answers on the control socket."""

    code = "broker_not_running"


class ControlSocketInUse(ApplianceError):
    """Another live server already answers on the control socket path."""

    status = 409
    code = "control_socket_in_use"


def _error(code: str, reason: str, status: int = 400) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "reason": reason, "status": status}}


def peer_uid(conn: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (Linux)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class ControlServer:
    """Serve ``handler`` on a Unix socket at ``path`` from background threads.

    ``start()`` binds and starts serving (refusing if another live server
    answers on ``path``; replacing a stale socket file left by a crash);
    ``stop()`` stops and removes the socket file if it is still ours.
    """

    def __init__(
        self,
        path: Path,
        handler: Callable[[dict[str, Any]], dict[str, Any]],
        *,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        peer_timeout_s: float = PEER_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.path = Path(path)
        self._handler = handler
        self._max_request = max_request_bytes
        self._peer_timeout = peer_timeout_s
        self._slots = threading.BoundedSemaphore(max_connections)
        self._allowed_uids = frozenset({os.geteuid(), 0})
        self._sock: socket.socket | None = None
        self._inode: int | None = None
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- life cycle -------------------------------------------------------------

    def start(self) -> ControlServer:
        if self._sock is not None:
            raise RuntimeError("control server already started")
        if len(os.fsencode(self.path)) > _SUN_PATH_MAX:
            raise Unavailable(f"control socket path is too long for a Unix socket: {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._clear_stale()
        sock = self._bind_private()
        self._sock = sock
        self._inode = os.stat(self.path).st_ino
        self._wake_r, self._wake_w = os.pipe()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._serve, name="control-socket", daemon=True)
        self._thread.start()
        log.info("control socket listening on %s", self.path)
        return self

    def stop(self) -> None:
        """Stop accepting, and remove the socket file if it is still ours."""
        if self._sock is None:
            return
        self._stopping.set()
        os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sock.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._sock = None
        # Only remove the file we bound: a newer server may own the path now.
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()

    def __enter__(self) -> ControlServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _clear_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            # Never delete something that is not a socket on the strength of a path.
            raise Unavailable(f"{self.path} exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(self.path))
        except ConnectionRefusedError:
            log.warning("replacing stale control socket %s (left by a crashed run)", self.path)
            self.path.unlink()
            return
        except OSError as exc:
            raise Unavailable(f"cannot check control socket {self.path}: {exc}") from exc
        finally:
            probe.close()
        raise ControlSocketInUse(
            f"another broker is already listening on {self.path}; stop it first"
        )

    def _bind_private(self) -> socket.socket:
        # Bind inside a fresh 0700 directory, chmod 0600, then rename into
        # place: nobody else can reach the socket before its mode is final.
        tmpdir = tempfile.mkdtemp(prefix=".c", dir=self.path.parent)
        tmp = os.path.join(tmpdir, "s")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if len(os.fsencode(tmp)) > _SUN_PATH_MAX:
                raise Unavailable(f"control socket path is too long for a Unix socket: {tmp}")
            sock.bind(tmp)
            os.chmod(tmp, 0o600)
            sock.listen(16)
            os.rename(tmp, self.path)
        except BaseException:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        finally:
            os.rmdir(tmpdir)
        return sock

    # -- serving ------------------------------------------------------------------

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            ready, _, _ = select.select([self._sock.fileno(), self._wake_r], [], [])
            if self._wake_r in ready:
                return
            try:
                conn, _ = self._sock.accept()
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EINTR):
                    continue
                log.exception("control socket accept failed")
                return
            if not self._slots.acquire(blocking=False):
                self._reply(conn, _error("busy", "the broker is busy; try again", 503))
                conn.close()
                continue
            threading.Thread(
                target=self._serve_one, args=(conn,), name="control-conn", daemon=True
            ).start()

    def _serve_one(self, conn: socket.socket) -> None:
        try:
            with conn:
                uid = peer_uid(conn)
                if uid not in self._allowed_uids:
                    # Checked before reading anything the peer sent.
                    log.warning("control socket: refused a peer with uid %d", uid)
                    self._reply(
                        conn,
                        _error(
                            "forbidden",
                            "only the broker's user or root may use the control socket",
                            403,
                        ),
                    )
                    return
                conn.settimeout(self._peer_timeout)
                self._reply(conn, self._answer(conn))
        except Exception:
            log.exception("control socket connection failed")
        finally:
            self._slots.release()

    def _answer(self, conn: socket.socket) -> dict[str, Any]:
        try:
            line = _read_line(conn, self._max_request)
        except _TooLong:
            return _error(
                "request_too_large", f"request line exceeds {self._max_request} bytes", 413
            )
        except TimeoutError:
            return _error("timeout", "no complete request line in time", 408)
        try:
            request = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _error("malformed_request", f"request is not valid JSON: {exc}")
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            return _error("malformed_request", 'request must be a JSON object with a string "op"')
        try:
            result = self._handler(request)
            if not isinstance(result, dict):
                raise TypeError(f"handler returned {type(result).__name__}, not dict")
            response = {"ok": True, "result": result}
            json.dumps(response)  # fail here, not halfway through the reply
            return response
        except ApplianceError as exc:
            return _error(exc.code, exc.reason, exc.status)
        except Exception:
            log.exception("control op %r failed", request.get("op"))
            return _error("internal_error", "the broker failed to handle the request", 500)

    @staticmethod
    def _reply(conn: socket.socket, response: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps(response, separators=(",", ":")).encode() + b"\n")


class _TooLong(Exception):
    pass


def _read_line(conn: socket.socket, limit: int) -> bytes:
    """Read up to the first newline (or EOF), refusing more than ``limit`` bytes."""
    buf = bytearray()
    while True:
        chunk = conn.recv(min(65536, limit + 1 - len(buf)))
        if not chunk:
            break
        nl = chunk.find(b"\n")
        if nl >= 0:
            buf += chunk[:nl]
            break
        buf += chunk
        if len(buf) > limit:  # stop reading: never buffer more than the limit
            raise _TooLong
    return bytes(buf)


def _error_class(code: str) -> type[ApplianceError]:
    """The ApplianceError subclass that owns ``code``, so the CLI raises the
    same kind of error the broker did."""
    todo: list[type[ApplianceError]] = [ApplianceError]
    while todo:
        cls = todo.pop()
        if cls.__dict__.get("code") == code:
            return cls
        todo.extend(cls.__subclasses__())
    return ApplianceError


class ControlClient:
    """The CLI's end: one op per connection."""

    def __init__(self, path: Path, timeout: float = 10) -> None:
        self.path = Path(path)
        self.timeout = timeout

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Run ``op`` in the broker and return its result; a refusal is
        raised as the ApplianceError (subclass) the broker raised."""
        # Flat: the arguments sit beside "op" (a keyword cannot be called op).
        request = json.dumps({"op": op, **args}, separators=(",", ":")).encode() + b"\n"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            try:
                sock.connect(str(self.path))
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise BrokerNotRunning(
                    f"no broker is listening on {self.path}; start it with `appliance up`"
                ) from exc
            except PermissionError as exc:
                raise Unavailable(
                    f"permission denied on {self.path}: run this as the broker's user or root",
                    code="forbidden",
                    status=403,
                ) from exc
            try:
                # A refused peer may be answered and closed on before its line
                # is sent: the answer is still there to read.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    sock.sendall(request)
                raw = _read_line(sock, MAX_RESPONSE_BYTES)
            except TimeoutError as exc:
                raise Unavailable(
                    f"the broker did not answer on {self.path} within {self.timeout:g}s"
                ) from exc
            except _TooLong as exc:
                raise Unavailable("the broker's answer was too large") from exc
            except OSError as exc:
                raise Unavailable(f"control socket {self.path} failed: {exc}") from exc
        finally:
            sock.close()
        if not raw:
            raise Unavailable("the broker closed the control connection without an answer")
        try:
            response = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise Unavailable(f"the broker's answer is not JSON: {exc}") from exc
        if response.get("ok") is True and isinstance(response.get("result"), dict):
            return response["result"]
        err = response.get("error") or {}
        code = str(err.get("code", "error"))
        cls = _error_class(code)
        raise cls(str(err.get("reason", "the broker refused")), code=code, status=err.get("status"))
