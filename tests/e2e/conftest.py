"""Start the real broker (``appliance up --dev``) as a subprocess on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Box:
    """One appliance process with its state directory and a share named docs."""

    def __init__(self, root: Path):
        self.state = root / "state"
        self.share = root / "share"
        self.share.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "broker.log"
        self.extra: list[str] = ["--no-agent"]

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "appliance.cli",
            "up",
            "--dev",
            "--state-dir",
            str(self.state),
            "--share",
            f"docs={self.share}",
            "--port",
            str(self.port),
            *self.extra,
        ]
        self.proc = subprocess.Popen(cmd, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("broker exited:\n" + self.log.read_text())
            try:
                if httpx.get(self.url + "/healthz", timeout=1, verify=False).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("broker did not start:\n" + self.log.read_text())

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            self.proc.wait(timeout=20)
        self.proc = None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [sys.executable, "-m", "appliance.cli", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "APPLIANCE_STATE_DIR": str(self.state)},
        )
        if check and out.returncode != 0:
            raise AssertionError(f"appliance {' '.join(args)} failed:\n{out.stdout}{out.stderr}")
        return out

    def press(self, decision: str = "approve") -> subprocess.CompletedProcess[str]:
        """Press the virtual panel once a request is shown and its arming delay
        (1 s) has passed. A press the box ignores (nothing shown yet: the
        desktop's process is still starting on a loaded machine; or inside the
        arming delay) is tried again, as a person would; any other refusal fails."""
        deadline = time.monotonic() + 60
        while True:
            time.sleep(1.2)
            out = self.cli("panel", decision, "--state-dir", str(self.state), check=False)
            said = out.stdout + out.stderr
            if out.returncode == 0:
                return out
            waiting = "nothing is waiting" in said or "arming delay" in said
            if not waiting or time.monotonic() > deadline:
                raise AssertionError(f"appliance panel {decision} failed:\n{said}")

    def pair(self, name: str = "laptop", grant: dict | None = None) -> httpx.Client:
        """A desktop paired to read and change the share docs (unless ``grant``)."""
        grant = grant or {"shares": {"docs": "read-write"}}
        r = httpx.post(self.url + "/v1/pairings", json={"name": name, "grant": grant})
        assert r.status_code == 202, r.text
        pairing = r.json()
        assert (
            httpx.get(f"{self.url}/v1/pairings/{pairing['pairing_id']}").json()["status"]
            == "pending"
        )
        self.press()
        r = httpx.get(f"{self.url}/v1/pairings/{pairing['pairing_id']}")
        assert r.status_code == 200, r.text
        credential = r.json()["credential"]
        return httpx.Client(
            base_url=self.url, timeout=60, headers={"Authorization": f"Bearer {credential}"}
        )


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    b = Box(tmp_path)
    b.start()
    try:
        yield b
    finally:
        b.stop()
