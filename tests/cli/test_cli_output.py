"""The CLI for people and for scripts: every command, readable by default
and exact JSON with --json, against a running development box; documented
exit codes; no colour codes when not on a terminal; bad input is a one-line
reason, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.cli.output import EXIT_CODES, NOT_PAIRED, REFUSED, UNREACHABLE, USAGE, WAITING
from tests.e2e.conftest import Box, free_port


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    b = Box(tmp_path_factory.mktemp("cli"))
    (b.share / "Inbox").mkdir()
    (b.share / "Inbox" / "a.txt").write_text("alpha")
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="module")
def creds(box: Box, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("desk") / "client.json"
    out = run(
        "pair",
        "--url",
        box.url,
        "--name",
        "desk",
        "--write",
        "docs",
        "--credentials",
        str(path),
        "--json",
        press=box,
    )
    assert out.returncode == 0, out.stderr
    paired = json.loads(out.stdout)
    assert paired["client_id"].startswith("cl_") and paired["credentials"] == str(path)
    assert "credential" not in paired  # the secret stays in the 0600 file
    return path


def run(
    *args: str, press: Box | None = None, decision: str = "approve", stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`appliance ARGS` as a user runs it (not a terminal); pressing the
    virtual panel meanwhile when ``press`` is given."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance.cli", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    if press is not None:
        deadline = time.monotonic() + 20
        while not json.loads(press.cli("panel", "show", "--json").stdout)["pending"]:
            assert time.monotonic() < deadline, "nothing reached the panel"
            time.sleep(0.2)
        press.press(decision)
    out, err = proc.communicate(stdin, timeout=90)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert "Traceback" not in err, err
    assert "\x1b[" not in out + err, "colour codes when not on a terminal"
    return result


def both(*args: str, **kw) -> tuple[subprocess.CompletedProcess[str], object]:
    """The command for people, then with --json (parsed)."""
    human = run(*args, **kw)
    scripted = run(*args, "--json", **kw)
    assert scripted.returncode == human.returncode, (human.stderr, scripted.stderr)
    return human, json.loads(scripted.stdout)


def test_box_commands(box: Box, creds: Path) -> None:
    state = ("--state-dir", str(box.state))
    human, shown = both("panel", "show", *state)
    assert "nothing is waiting" in human.stdout and shown == {"pending": None, "waiting": []}

    human, listed = both("clients", "list", *state)
    assert "desk" in human.stdout and "active" in human.stdout
    assert [c["name"] for c in listed["clients"]] == ["desk"]

    human, status = both("status", *state)
    assert "development" in human.stdout and "virtual" in human.stdout
    assert status["mode"] == "development" and status["shares"]["docs"]

    human, plugins = both("plugins", "list", *state)
    assert "no plugin is installed" in human.stdout and plugins == {"plugins": []}

    human, report = both("audit", "verify", *state)
    assert "ok: audit log verifies" in human.stdout and report["ok"] is True
    assert report["entries"] > 0 and f"{report['entries']} entries" in human.stdout

    human, checks = both("selftest", *state)
    assert "self-test" in human.stdout and isinstance(checks["checks"], list)


def test_desktop_commands_and_a_press(box: Box, creds: Path, tmp_path: Path) -> None:
    c = ("--credentials", str(creds))
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"intents": [{"verb": "file.mkdir", "resource": "share:docs/A"}]}))

    human = run("submit", str(plan), *c, press=box)
    assert human.returncode == 0, human.stderr
    assert "shows code" in human.stderr  # the code to match, while waiting
    # ...after the whole plan: what a press would do comes before the code.
    said = human.stderr
    assert -1 < said.find("1. file.mkdir share:docs/A") < said.find("shows code"), said
    assert "1. file.mkdir share:docs/A" in human.stdout and "medium risk" in human.stdout
    assert "to undo: appliance undo plan_" in human.stdout
    plan_id = human.stdout.split("to undo: appliance undo ")[1].split()[0]

    human, looked = both("plan", plan_id, *c)
    assert looked["status"] == "done" and looked["plan_id"] == plan_id
    assert f"Plan {plan_id}: done" in human.stdout

    undone = run("undo", plan_id, *c, "--json", press=box)
    assert undone.returncode == 0 and json.loads(undone.stdout)["kind"] == "undo"
    assert not (box.share / "A").exists()

    plan.write_text(json.dumps([{"verb": "file.read", "resource": "share:docs/Inbox/a.txt"}]))
    human, read = both("submit", str(plan), *c)
    assert "alpha" in human.stdout and read["intents"][0]["result"]["content"] == "alpha"

    # The press's signed receipt, checked from the audit log.
    auditor = box.pair("auditor", grant={"shares": {}, "audit": True})
    entries = auditor.get("/v1/audit", params={"limit": 1000}).json()["entries"]
    receipt = tmp_path / "receipt.json"
    receipt.write_text(json.dumps(next(e for e in entries if e["kind"] == "approval.receipt")))
    human, checked = both("receipt", "verify", str(receipt), "--state-dir", str(box.state))
    assert "ok: approval apr_" in human.stdout and checked["ok"] and checked["approval_id"]

    human, verified = both("verify", *c)
    assert "ok: the boot statement is signed" in human.stdout and verified["ok"]

    # No model runs on this box: the task ends failed, with the reason.
    human, task = both("task", "sort my inbox", *c, "--timeout", "20")
    assert human.returncode == REFUSED and task["status"] == "failed"
    assert "failed" in human.stdout and task["error"] in human.stdout

    # A refused plan: the reasons, exit 1.
    plan.write_text(json.dumps([{"verb": "file.read", "resource": "share:docs/../x"}]))
    human, denied = both("submit", str(plan), *c)
    assert human.returncode == REFUSED and denied["status"] == "denied"
    assert "denied" in human.stdout and "'..'" in human.stdout


def test_waiting_ends_with_its_own_exit_code(box: Box, creds: Path, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps([{"verb": "file.mkdir", "resource": "share:docs/B"}]))
    out = run("submit", str(plan), "--credentials", str(creds), "--timeout", "1", "--json")
    assert out.returncode == WAITING and json.loads(out.stdout)["status"] == "pending_approval"
    box.press("deny")  # clear the panel for the next test


def test_exit_codes_and_reasons_instead_of_tracebacks(box: Box, tmp_path: Path) -> None:
    missing = ("--credentials", str(tmp_path / "none.json"))
    out = run("plan", "plan_x", *missing)
    assert out.returncode == NOT_PAIRED and "appliance pair" in out.stderr
    gone = tmp_path / "gone.json"
    gone.write_text(json.dumps({"url": f"http://127.0.0.1:{free_port()}", "credential": "c.s"}))
    out = run("plan", "plan_x", "--credentials", str(gone))
    assert out.returncode == UNREACHABLE and "cannot reach the box" in out.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    out = run("submit", str(bad), "--credentials", str(gone))
    assert out.returncode == USAGE and "is not JSON" in out.stderr
    out = run("submit", str(tmp_path / "nope.json"), "--credentials", str(gone))
    assert out.returncode == USAGE and "cannot read the plan" in out.stderr
    out = run("status", "--state-dir", str(tmp_path))
    assert out.returncode == UNREACHABLE and "appliance up" in out.stderr
    out = run("clients", "revoke", "--state-dir", str(tmp_path))
    assert out.returncode == USAGE and "CLIENT_ID" in out.stderr
    helped = run("--help")
    for code in EXIT_CODES:
        assert f"{code:>3}  " in helped.stdout


def test_last_the_key_epoch_and_revocation(box: Box, creds: Path) -> None:
    state = ("--state-dir", str(box.state))
    human = run("keys", "revoke-all", *state)
    assert human.returncode == 0 and "epoch" in human.stdout
    revoked = json.loads(run("keys", "revoke-all", *state, "--json").stdout)
    assert revoked["epoch"] >= 2
    desk = json.loads(run("clients", "list", *state, "--json").stdout)["clients"][0]["client_id"]
    human = run("clients", "revoke", desk, *state)
    assert human.returncode == 0 and f"revoked {desk}" in human.stdout
    other = box.pair("other").headers["authorization"].split()[1].split(".")[0]
    assert json.loads(run("clients", "revoke", other, *state, "--json").stdout) == {
        "revoked": other,
        "approvals_withdrawn": 0,
        "tasks_ended": 0,
    }
    out = run("plan", "plan_x", "--credentials", str(creds))
    assert out.returncode == REFUSED and "revoked" in out.stderr
