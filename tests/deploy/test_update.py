"""`appliance update`: install writes the other slot and reboots with the
tryboot flag; mark-good keeps a slot once the broker and agent answer, and a
trial boot that never gets there falls back. RAUC and systemctl are behind
the System seam (the real ones are checked in test_rauc.py and on the box);
the tryboot backend is the real script, driven as RAUC would drive it."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance import update
from appliance.agent.protocol import encode
from tests.deploy.conftest import IMAGE_BUILD, run


class FakeSystem:
    """rauc and systemctl: records each command; `rauc install` and `rauc
    status mark-*` call the real tryboot backend as RAUC does."""

    def __init__(self, state: Path, autoboot: Path, cmdline: Path, *, info_ok: bool = True):
        self.calls: list[list[str]] = []
        self.env = {**os.environ, "TRYBOOT_STATE": str(state), "TRYBOOT_AUTOBOOT": str(autoboot),
                    "TRYBOOT_CMDLINE": str(cmdline)}  # fmt: skip
        self.info_ok = info_ok

    def backend(self, *args: str) -> str:
        proc = run("sh", IMAGE_BUILD / "rauc/tryboot-backend", *args, env=self.env)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    def run(self, argv: list[str]) -> tuple[int, str]:
        self.calls.append(argv)
        if argv[:2] == ["rauc", "info"]:
            return (0, json.dumps({"version": "1.1"})) if self.info_ok else (1, "signature bad")
        if argv[:2] == ["rauc", "install"]:
            current = self.backend("get-current")
            self.backend("set-primary", "B" if current == "A" else "A")
            return 0, "installed"
        if argv[:3] == ["rauc", "status", "mark-good"]:
            self.backend("set-state", self.backend("get-current"), "good")
            return 0, ""
        if argv[:3] == ["rauc", "status", "mark-bad"]:
            self.backend("set-state", self.backend("get-current"), "bad")
            return 0, ""
        return 0, ""


@pytest.fixture
def box(tmp_path: Path) -> tuple[FakeSystem, update.Slots, Path]:
    state, autoboot, cmdline = tmp_path / "rauc", tmp_path / "autoboot.txt", tmp_path / "cmdline"
    autoboot.write_text("[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n")
    cmdline.write_text("console=tty1 root=PARTLABEL=rootA rw rauc.slot=A\n")
    bundle = tmp_path / "update.raucb"
    bundle.write_bytes(b"signed")
    return FakeSystem(state, autoboot, cmdline), update.Slots(state, cmdline), bundle


def test_install_writes_the_other_slot_and_reboots_with_the_tryboot_flag(box) -> None:
    system, slots, bundle = box
    said: list[str] = []
    assert update.install(bundle, system=system, slots=slots, say=said.append) == "B"
    assert [c[:2] for c in system.calls] == [["rauc", "info"], ["rauc", "install"],
                                              ["systemctl", "reboot"]]  # fmt: skip
    assert system.calls[-1] == ["systemctl", "reboot", "0 tryboot"]
    assert f"--keyring={update.KEYRING}" in system.calls[0]
    assert slots.pending() == "B" and "version 1.1" in said[0]


def test_install_without_reboot_says_how(box) -> None:
    system, slots, bundle = box
    said: list[str] = []
    update.install(bundle, system=system, slots=slots, reboot=False, say=said.append)
    assert ["systemctl", "reboot", "0 tryboot"] not in system.calls
    assert "'0 tryboot'" in said[-1]


def test_install_refuses_an_unverified_bundle_before_writing(box) -> None:
    system, slots, bundle = box
    system.info_ok = False
    with pytest.raises(update.UpdateError, match="does not verify"):
        update.install(bundle, system=system, slots=slots)
    assert [c[:2] for c in system.calls] == [["rauc", "info"]]
    with pytest.raises(update.UpdateError, match="no update bundle"):
        update.install(bundle.with_name("missing.raucb"), system=system, slots=slots)


def test_install_does_not_reboot_when_the_slot_is_not_pending(box) -> None:
    system, slots, bundle = box

    class NoSwitch(FakeSystem):
        def run(self, argv: list[str]) -> tuple[int, str]:
            self.calls.append(argv)
            return (0, "{}") if argv[:2] != ["systemctl", "reboot"] else (0, "")

    quiet = NoSwitch(slots.state, Path(system.env["TRYBOOT_AUTOBOOT"]), slots.cmdline)
    with pytest.raises(update.UpdateError, match="not waiting for its trial boot"):
        update.install(bundle, system=quiet, slots=slots)
    assert not any(c[0] == "systemctl" for c in quiet.calls)


def _trial_boot_of_b(system: FakeSystem, slots: update.Slots) -> None:
    system.backend("set-primary", "B")
    slots.cmdline.write_text("root=PARTLABEL=rootB rw rauc.slot=B\n")


def test_a_healthy_trial_boot_is_kept(box) -> None:
    system, slots, _ = box
    _trial_boot_of_b(system, slots)
    assert slots.on_trial()
    checks = iter(["the broker does not answer", None])
    ok = update.mark_good(system=system, slots=slots, check=lambda: next(checks),
                          sleep=lambda s: None, say=lambda s: None)  # fmt: skip
    assert ok and system.calls == [["rauc", "status", "mark-good"]]
    assert slots.pending() is None and system.backend("get-primary") == "B"


def test_an_unhealthy_trial_boot_falls_back_to_the_last_good_slot(box) -> None:
    system, slots, _ = box
    _trial_boot_of_b(system, slots)
    clock = iter(range(0, 10_000, 100))
    ok = update.mark_good(system=system, slots=slots, check=lambda: "the agent does not answer",
                          timeout_s=600, sleep=lambda s: None, clock=lambda: next(clock),
                          say=lambda s: None)  # fmt: skip
    assert not ok
    assert system.calls == [["rauc", "status", "mark-bad"], ["systemctl", "reboot"]]
    assert system.backend("get-state", "B") == "bad" and system.backend("get-primary") == "A"


def test_an_unhealthy_ordinary_boot_is_reported_and_not_rebooted(box) -> None:
    system, slots, _ = box
    clock = iter(range(0, 10_000, 100))
    said: list[str] = []
    ok = update.mark_good(system=system, slots=slots, check=lambda: "the broker does not answer",
                          timeout_s=300, sleep=lambda s: None, clock=lambda: next(clock),
                          say=said.append)  # fmt: skip
    assert not ok and system.calls == [] and "not a trial boot" in said[-1]


@pytest.fixture
def agent_socket(tmp_path: Path) -> Iterator[tuple[Path, list[dict]]]:
    """A socket that answers like the agent refusing a peer that is not the broker."""
    path = tmp_path / "agent.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    refused = {"ok": False, "error": {"code": "forbidden_peer", "reason": "uid 0"}}
    answers = [refused]

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return  # closed at teardown
            with conn:
                conn.sendall(encode(answers.pop(0) if answers else refused))

    threading.Thread(target=serve, daemon=True).start()
    yield path, answers
    srv.close()


def test_the_agent_refusing_root_counts_as_answering(agent_socket) -> None:
    path, answers = agent_socket
    assert update._agent_answers(path, os.getuid(), 5) is None
    answers.append({"ok": False, "error": {"code": "model_error", "reason": "no HEF"}})
    assert "answers with an error" in (update._agent_answers(path, os.getuid(), 5) or "")
    assert "not the agent's" in (update._agent_answers(path, os.getuid() + 1, 5) or "")
    assert "does not answer" in (update._agent_answers(path.with_name("x.sock"), None, 1) or "")


def test_the_command_line_has_update(capsys: pytest.CaptureFixture[str]) -> None:
    from appliance.cli import build_parser

    args = build_parser().parse_args(["update", "install", "b.raucb", "--no-reboot"])
    assert args.func is update.run and args.no_reboot and args.bundle == Path("b.raucb")
    args = build_parser().parse_args(["update", "mark-good", "--timeout", "5"])
    assert args.update_command == "mark-good" and args.timeout == 5
