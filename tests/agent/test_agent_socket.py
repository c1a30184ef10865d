"""The agent process and the broker's client over the Unix socket: the round
trip, who may talk to whom (SO_PEERCRED, socket mode), and every way the agent
can fail (not running, hung, killed mid-request, garbage) ending in a clear
AgentError."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.agent.client import AgentClient
from appliance.agent.errors import AgentError
from appliance.agent.planner import Planner
from appliance.agent.server import AgentServer
from tests.agent.conftest import LISTING

NOBODY = 65534


@pytest.fixture
def agent(tmp_path: Path, planner: Planner) -> Iterator[AgentServer]:
    server = AgentServer(tmp_path / "agent.sock", planner, broker_uid=None)
    server.serve_in_thread()
    yield server
    server.close()


def test_round_trip(agent: AgentServer) -> None:
    client = AgentClient(agent.socket_path, agent_uid=os.getuid(), timeout_s=60)
    health = client.health()
    assert health["model_sha256"] == agent.planner.backend.model_sha256
    assert client.last_peer is not None and client.last_peer.pid == os.getpid()
    result = client.plan("delete notes.txt", LISTING)
    assert result["intents"] and result["model_id"] == agent.planner.backend.model_id
    assert result["kind"] == "plan" and result["explanation"] and result["compact"]
    out = client.extract("Invoice of 2021", {"year": "integer"})
    assert set(out["values"]) == {"year"}
    # Refusals of the agent come back as agent_failed with its reason.
    with pytest.raises(AgentError) as e:
        client.extract("x", {"Bad Name": "integer"})
    assert e.value.code == "agent_failed" and "bad field name" in e.value.reason


def test_socket_is_0660(agent: AgentServer) -> None:
    assert stat.S_IMODE(os.stat(agent.socket_path).st_mode) == 0o660


def _as_nobody(fn: Callable[[], str]) -> str:
    """Run ``fn`` in a forked child as uid/gid nobody; return what it returns."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, report, exit without pytest's cleanup
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            out = fn()
        except BaseException as e:  # noqa: BLE001
            out = f"child error: {e!r}"
        os.write(w, out.encode()[:4000])
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read().decode()
    os.waitpid(pid, 0)
    return data


def _raw_request(path: Path) -> Callable[[], str]:
    def go() -> str:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(path))
        except PermissionError:
            return "EACCES"
        request = {"op": "plan", "text": "delete everything", "listing": LISTING}
        # The agent may refuse and close before the request is even written.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(json.dumps(request).encode() + b"\n")
        s.settimeout(10)
        return s.recv(65536).decode()

    return go


@pytest.fixture
def public_agent(planner: Planner) -> Iterator[AgentServer]:
    """An agent whose socket's folder others may enter (pytest's tmp_path is
    0700, which alone would keep them out): only the socket's own mode and
    SO_PEERCRED stand in the way."""
    folder = Path(tempfile.mkdtemp(prefix="agent-test-"))
    folder.chmod(0o755)
    server = AgentServer(folder / "agent.sock", planner, broker_uid=None)
    server.serve_in_thread()
    yield server
    server.close()
    shutil.rmtree(folder)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to become another user")
def test_other_users_are_refused(public_agent: AgentServer) -> None:
    agent = public_agent
    # The socket's mode keeps other users out...
    assert _as_nobody(_raw_request(agent.socket_path)) == "EACCES"
    # ...and with the mode widened by mistake, SO_PEERCRED still does.
    os.chmod(agent.socket_path, 0o666)
    served = agent.served
    answer = json.loads(_as_nobody(_raw_request(agent.socket_path)))
    assert answer["ok"] is False and answer["error"]["code"] == "forbidden_peer"
    assert agent.refused == 1 and agent.served == served  # no model call was made


def test_client_refuses_an_impostor_agent(agent: AgentServer) -> None:
    served = agent.served
    client = AgentClient(agent.socket_path, agent_uid=os.getuid() + 4242, timeout_s=5)
    with pytest.raises(AgentError) as e:
        client.plan("delete notes.txt", LISTING)
    assert e.value.code == "agent_unavailable" and e.value.status == 503
    assert "not as the agent's uid" in e.value.reason
    time.sleep(0.05)
    assert agent.served == served  # the request was never sent


def test_nothing_listening(tmp_path: Path) -> None:
    with pytest.raises(AgentError) as e:
        AgentClient(tmp_path / "none.sock", timeout_s=2).plan("x", LISTING)
    assert (e.value.code, e.value.status) == ("agent_unavailable", 503)
    # A stale socket file left by a dead agent: connection refused.
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()
    with pytest.raises(AgentError) as e:
        AgentClient(stale, timeout_s=2).health()
    assert e.value.code == "agent_unavailable"


class FakePeer:
    """A real Unix-socket peer answering a fixed byte string (or nothing), for
    the garbage an agent could send back."""

    def __init__(self, path: Path, answer: bytes | None, *, hang: bool = False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.answer, self.hang = answer, hang
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            conn.recv(1 << 20)
            if self.hang:
                continue
            if self.answer is not None:
                with contextlib.suppress(OSError):  # the client may stop reading
                    conn.sendall(self.answer)
            conn.close()

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def _plan_answer(intents: list[dict]) -> bytes:
    result = {"intents": intents, "model_id": "m", "model_sha256": "a" * 64}
    return json.dumps({"ok": True, "result": result}).encode() + b"\n"


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (None, "without answering"),
        (b"hello there\n", "not JSON"),
        (b'{"result": 1}\n', "no ok field"),
        (b'{"ok": true, "result": {"intents": []}}\n', "name its model"),
        (_plan_answer([{"verb": "file.shred", "resource": "share:docs/x"}]), "not a valid plan"),
        (_plan_answer([{"verb": "file.delete", "resource": "share:etc/passwd"}]), "outside"),
        (
            _plan_answer(
                [
                    {
                        "verb": "file.move",
                        "resource": "share:docs/a",
                        "params": {"to": "share:home/a"},
                    }
                ]
            ),
            "outside",
        ),
        (b'{"ok": false, "error": {"code": "model_error", "reason": "boom"}}\n', "boom"),
        (b'{"ok": true, "result": {"intents": [' + b" " * (2 << 20), "over"),
    ],
)
def test_garbage_answers_fail_the_request(
    tmp_path: Path, answer: bytes | None, reason: str
) -> None:
    peer = FakePeer(tmp_path / "a.sock", answer)
    try:
        with pytest.raises(AgentError) as e:
            AgentClient(tmp_path / "a.sock", timeout_s=5).plan("x", LISTING)
        assert (e.value.code, e.value.status) == ("agent_failed", 502)
        assert reason in e.value.reason
    finally:
        peer.close()


def test_hung_peer_times_out(tmp_path: Path) -> None:
    peer = FakePeer(tmp_path / "h.sock", None, hang=True)
    try:
        start = time.monotonic()
        with pytest.raises(AgentError) as e:
            AgentClient(tmp_path / "h.sock", timeout_s=0.5).plan("x", LISTING)
        assert (e.value.code, e.value.status) == ("agent_timeout", 504)
        assert time.monotonic() - start < 2
    finally:
        peer.close()


def _end(proc: subprocess.Popen[bytes]) -> None:
    """Kill the agent process if it still runs, reap it, close its pipe."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if proc.stderr:
        proc.stderr.close()


def test_the_real_agent_process_stopped_then_killed(tmp_path: Path) -> None:
    """`python -m appliance.agent` as its own process: a SIGSTOP'ed agent is a
    timeout, a SIGKILL'ed one mid-request is a failure; neither answers a plan."""
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance.agent", "--socket", str(sock), "--no-warm"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        client = AgentClient(sock, agent_uid=os.getuid(), timeout_s=1.0)
        deadline = time.monotonic() + 90  # the model's hash is checked before it loads
        while True:
            try:
                assert client.health()["pid"] == proc.pid
                break
            except AgentError:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660

        os.kill(proc.pid, signal.SIGSTOP)
        with pytest.raises(AgentError) as e:
            client.plan("delete notes.txt", LISTING)
        assert e.value.code == "agent_timeout"
        os.kill(proc.pid, signal.SIGCONT)

        outcome: list[BaseException] = []

        def ask() -> None:
            try:
                AgentClient(sock, timeout_s=60).plan("sort the PDFs by year", LISTING)
            except BaseException as exc:  # noqa: BLE001
                outcome.append(exc)

        t = threading.Thread(target=ask)
        t.start()
        time.sleep(0.3)  # the request is in (the agent is still planning the last one)
        proc.kill()
        t.join(10)
        assert len(outcome) == 1 and isinstance(outcome[0], AgentError)
        assert outcome[0].code == "agent_failed"
    finally:
        _end(proc)


def test_the_agent_listens_before_its_model_loads(tmp_path: Path) -> None:
    """A request sent while the agent checks and loads its model waits in
    the socket's backlog instead of finding nothing there ("not running").
    The model file here is a pipe, so the agent's sha256 check waits until
    the test writes; what it writes does not match the manifest, so the
    agent then refuses to load it and leaves: the waiting request fails at
    once (not at its deadline), and the socket file goes with the agent."""
    model = tmp_path / "model.gguf"
    os.mkfifo(model)
    manifest = tmp_path / "pipe.toml"
    manifest.write_text(
        'name = "pipe"\nbackend = "llama_cpp"\nfile = "model.gguf"\n'
        f'sha256 = "{"0" * 64}"\nchat_template = "chatml"\ncontext_tokens = 512\n'
        'licence = "test"\nsource = "test"\nintended_use = "a test"\n'
    )
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance.agent", "--socket", str(sock), "--model", str(manifest)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the agent never listened"
            time.sleep(0.05)
        # Listening, and the model not checked yet (nothing was written).
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660
        outcome: list[BaseException] = []

        def ask() -> None:
            try:
                AgentClient(sock, timeout_s=60).health()
            except BaseException as exc:  # noqa: BLE001
                outcome.append(exc)

        t = threading.Thread(target=ask)
        t.start()
        time.sleep(0.5)
        assert t.is_alive() and not outcome  # waiting, not refused
        started = time.monotonic()
        with open(model, "wb") as pipe:
            pipe.write(b"not the model the manifest names")
        t.join(30)
        assert proc.wait(30) == 2
        assert len(outcome) == 1 and isinstance(outcome[0], AgentError), outcome
        assert outcome[0].code in ("agent_failed", "agent_unavailable"), outcome[0].code
        assert time.monotonic() - started < 20
        assert proc.stderr is not None and b"does not match its manifest" in proc.stderr.read()
        assert not sock.exists()
    finally:
        _end(proc)


def test_a_request_whose_sender_left_is_not_planned(tmp_path: Path, planner: Planner) -> None:
    """A request that waited in the backlog past its sender's deadline (the
    sender closed the connection) costs the model nothing; one whose sender
    still waits is answered."""
    server = AgentServer(tmp_path / "agent.sock", planner, broker_uid=None)
    server.bind()  # listening, not serving yet: as while the agent starts
    try:
        gone = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        gone.connect(str(server.socket_path))
        gone.sendall(
            json.dumps({"op": "plan", "text": "delete notes.txt", "listing": LISTING}).encode()
            + b"\n"
        )
        gone.close()  # gave up before the agent took it
        answers: list[dict[str, object]] = []
        t = threading.Thread(
            target=lambda: answers.append(AgentClient(server.socket_path, timeout_s=60).health())
        )
        t.start()
        time.sleep(0.3)  # both wait in the backlog, the one that left first
        threading.Thread(target=server.serve_forever, daemon=True).start()
        t.join(60)
        assert len(answers) == 1 and answers[0]["served"] == 0  # the plan was not made
        assert server.served == 1
    finally:
        server.close()
