"""The local control socket: round trip, file mode, peer check, limits, errors."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import stat
import tempfile
import time
from pathlib import Path

import pytest

from appliance.approval import (
    BrokerNotRunning,
    ControlClient,
    ControlServer,
    ControlSocketInUse,
)
from appliance.errors import ApplianceError, NotFound, Unavailable


class Handler:
    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, request: dict) -> dict:
        self.calls.append(request)
        op = request["op"]
        if op == "missing":
            raise NotFound("no approval apr_x")
        if op == "crash":
            raise RuntimeError("secret internal detail")
        if op == "not-a-dict":
            return ["nope"]  # type: ignore[return-value]
        return {"echo": request}


@pytest.fixture
def handler() -> Handler:
    return Handler()


@pytest.fixture
def server(tmp_path, handler):
    srv = ControlServer(tmp_path / "control.sock", handler).start()
    yield srv
    srv.stop()


def raw_call(path: Path, data: bytes) -> dict:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(str(path))
    try:
        s.sendall(data)
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    return json.loads(buf)


def test_round_trip(server, handler):
    client = ControlClient(server.path)
    sent = {"op": "panel.press", "decision": "approve", "digest": "ab" * 32, "n": 3}
    assert client.call("panel.press", decision="approve", digest="ab" * 32, n=3) == {"echo": sent}
    assert handler.calls == [sent]


def test_socket_file_is_mode_0600_and_nothing_is_left_around(server, tmp_path):
    st = os.lstat(server.path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["control.sock"]  # no temp dir left


def test_malformed_json_is_answered_with_an_error(server, handler):
    resp = raw_call(server.path, b"{not json\n")
    assert resp["ok"] is False and resp["error"]["code"] == "malformed_request"
    resp = raw_call(server.path, b"[1, 2]\n")
    assert resp["error"]["code"] == "malformed_request"
    resp = raw_call(server.path, b'{"op": 5}\n')
    assert resp["error"]["code"] == "malformed_request"
    resp = raw_call(server.path, b"\xff\xfe\n")
    assert resp["error"]["code"] == "malformed_request"
    assert handler.calls == []


def test_oversize_request_line_is_refused(tmp_path, handler):
    with ControlServer(tmp_path / "c.sock", handler, max_request_bytes=1024) as srv:
        big = json.dumps({"op": "x", "pad": "a" * 5000}).encode() + b"\n"
        resp = raw_call(srv.path, big)
        assert resp["error"]["code"] == "request_too_large"
        # Without any newline at all, too.
        resp = raw_call(srv.path, b"a" * 4096)
        assert resp["error"]["code"] == "request_too_large"
        assert handler.calls == []
        # Just under the limit is fine.
        ok = json.dumps({"op": "x", "pad": "a" * 900}).encode() + b"\n"
        assert raw_call(srv.path, ok)["ok"] is True


def test_handler_errors_reach_the_client_as_the_same_error(server):
    client = ControlClient(server.path)
    with pytest.raises(NotFound) as err:
        client.call("missing")
    assert err.value.status == 404 and err.value.reason == "no approval apr_x"


def test_unexpected_handler_failure_is_generic(server, caplog):
    with pytest.raises(ApplianceError) as err:
        ControlClient(server.path).call("crash")
    assert err.value.code == "internal_error" and err.value.status == 500
    assert "secret" not in err.value.reason
    assert any("crash" in r.getMessage() for r in caplog.records)  # logged broker-side
    with pytest.raises(ApplianceError) as err:
        ControlClient(server.path).call("not-a-dict")
    assert err.value.code == "internal_error"


def test_client_error_when_nothing_listens(tmp_path):
    with pytest.raises(BrokerNotRunning) as err:
        ControlClient(tmp_path / "control.sock").call("status")
    assert "appliance up" in err.value.reason and str(tmp_path) in err.value.reason
    assert err.value.status == 503


def _leave_stale_socket(path: Path) -> None:
    """What a crashed broker leaves: a socket file nobody listens on."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)


def test_stale_socket_is_replaced(tmp_path, handler):
    path = tmp_path / "control.sock"
    _leave_stale_socket(path)
    with pytest.raises(BrokerNotRunning):
        ControlClient(path).call("status")
    with ControlServer(path, handler):
        assert ControlClient(path).call("status")["echo"]["op"] == "status"
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    assert not path.exists()  # stop() removes it


def test_refuses_to_start_over_a_live_server(server, handler):
    inode = os.lstat(server.path).st_ino
    with pytest.raises(ControlSocketInUse):
        ControlServer(server.path, handler).start()
    assert os.lstat(server.path).st_ino == inode
    assert ControlClient(server.path).call("still-me")["echo"]["op"] == "still-me"


def test_refuses_to_replace_a_file_that_is_not_a_socket(tmp_path, handler):
    path = tmp_path / "control.sock"
    path.write_text("precious")
    with pytest.raises(Unavailable):
        ControlServer(path, handler).start()
    assert path.read_text() == "precious"


def test_an_idle_peer_does_not_block_others(tmp_path, handler):
    with ControlServer(tmp_path / "c.sock", handler, peer_timeout_s=0.6) as srv:
        idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        idle.connect(str(srv.path))
        try:
            t0 = time.monotonic()
            assert ControlClient(srv.path).call("status")["echo"]["op"] == "status"
            assert time.monotonic() - t0 < 0.5  # not held up by the idle peer
            idle.settimeout(2)
            resp = json.loads(idle.recv(65536))  # the idle peer is timed out
            assert resp["error"]["code"] == "timeout"
        finally:
            idle.close()


def _connect_as(uid: int, gid: int, path: Path) -> dict:
    """Connect from a forked child running as ``uid``; report what it saw."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            try:
                s.connect(str(path))
                with contextlib.suppress(OSError):
                    s.sendall(b'{"op": "panel.press", "decision": "approve"}\n')
                out = {"uid": os.getuid(), "response": s.recv(65536).decode()}
            except OSError as exc:
                out = {"uid": os.getuid(), "errno": exc.errno}
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
def test_a_peer_with_another_uid_is_refused(handler):
    # A directory the other user can traverse (pytest's tmp dirs are 0700).
    d = Path(tempfile.mkdtemp(prefix="ctl", dir="/tmp"))
    try:
        os.chmod(d, 0o711)
        nobody = 65534
        with ControlServer(d / "c.sock", handler) as srv:
            # The file mode alone keeps the other user out...
            seen = _connect_as(nobody, nobody, srv.path)
            assert seen["uid"] == nobody and seen["errno"] == errno.EACCES
            # ...and if the mode were ever loosened, SO_PEERCRED still refuses.
            os.chmod(srv.path, 0o666)
            seen = _connect_as(nobody, nobody, srv.path)
            resp = json.loads(seen["response"])
            assert resp["ok"] is False and resp["error"]["code"] == "forbidden"
            assert handler.calls == []  # the op never reached the broker
            # The broker's own user (root here) is still served.
            assert ControlClient(srv.path).call("status")["echo"]["op"] == "status"
    finally:
        shutil.rmtree(d)
