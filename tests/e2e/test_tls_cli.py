"""Outside loopback-only HTTP: TLS with the device certificate, pinned by its
fingerprint, driven through the desktop CLI (pair, submit, undo)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from appliance.client import ApplianceClient
from tests.e2e.conftest import Box


@pytest.fixture
def tls_box(tmp_path: Path):
    b = Box(tmp_path)
    b.url = f"https://127.0.0.1:{b.port}"
    b.extra = ["--tls", "--no-agent"]
    b.start()
    try:
        yield b
    finally:
        b.stop()


def fingerprint(box: Box) -> str:
    match = re.search(r"fingerprint \(pin this on desktops\): ([0-9A-F:]+)", box.log.read_text())
    assert match, box.log.read_text()
    return match.group(1)


def test_pinned_tls_pairing_submit_and_undo(tls_box: Box, tmp_path: Path) -> None:
    box = tls_box
    fp = fingerprint(box)
    (box.share / "note.txt").write_text("hello")
    creds = tmp_path / "client.json"

    # Plain HTTP is not served, and a wrong pin is refused before any request.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{box.port}/healthz", timeout=2)
    with pytest.raises(ValueError, match="does not match"):
        ApplianceClient(box.url, fingerprint="AA:" * 31 + "AA")

    pair = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "appliance.cli",
            "pair",
            "--url",
            box.url,
            "--name",
            "desk",
            "--write",
            "docs",
            "--fingerprint",
            fp,
            "--credentials",
            str(creds),
            "--timeout",
            "60",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(0.5)
    box.press()
    out, _ = pair.communicate(timeout=60)
    assert pair.returncode == 0, out
    assert "verification code" in out
    saved = json.loads(creds.read_text())
    assert saved["fingerprint"] == fp and creds.stat().st_mode & 0o777 == 0o600
    # Pairing pinned the device key and (the box runs on swtpm) the attestation key.
    assert "BEGIN PUBLIC KEY" in saved["device_key_pem"] and "ak_pem" in saved

    verify = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "verify", "--credentials", str(creds)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "boot statement is signed by the device key" in verify.stdout
    assert "just now" in verify.stdout and "TPM2_Certify" in verify.stdout

    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps(
            {
                "intents": [
                    {
                        "verb": "file.rename",
                        "resource": "share:docs/note.txt",
                        "params": {"name": "n.txt"},
                    }
                ]
            }
        )
    )
    submit = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "appliance.cli",
            "submit",
            str(plan),
            "--credentials",
            str(creds),
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    box.press()
    out, err = submit.communicate(timeout=60)
    assert submit.returncode == 0, out + err
    done = json.loads(out)
    assert done["status"] == "done" and (box.share / "n.txt").read_text() == "hello"

    undo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "appliance.cli",
            "undo",
            done["intents"][0]["action_id"],
            "--credentials",
            str(creds),
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    box.press()
    out, err = undo.communicate(timeout=60)
    assert undo.returncode == 0, out + err
    assert (box.share / "note.txt").read_text() == "hello" and not (box.share / "n.txt").exists()
