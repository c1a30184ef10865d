"""A software TPM (``swtpm``) for development and tests.

On the Pi the TPM is a chip on SPI (``device:/dev/tpmrm0``). On a development
machine ``appliance up --dev`` starts swtpm when it is installed, with its
state under the broker's state directory, so the same TPM code runs against
it; the test fixtures start one per test session.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from appliance.process import die_with_parent


def available() -> bool:
    return shutil.which("swtpm") is not None


def _free_port_pair() -> int:
    """A port P with P and P+1 both free (server and control channel)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for swtpm")


class Swtpm:
    """One swtpm process serving TPM 2.0 commands on loopback TCP."""

    def __init__(self, state_dir: Path, port: int | None = None):
        self.state_dir = state_dir
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def start(self, timeout: float = 10.0) -> Swtpm:
        if not available():
            raise RuntimeError("swtpm is not installed (apt-get install swtpm)")
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.port is None:
            self.port = _free_port_pair()
        self.proc = subprocess.Popen(
            [
                "swtpm",
                "socket",
                "--tpm2",
                "--tpmstate",
                f"dir={self.state_dir}",
                "--server",
                f"type=tcp,port={self.port},bindaddr=127.0.0.1",
                "--ctrl",
                f"type=tcp,port={self.port + 1},bindaddr=127.0.0.1",
                "--flags",
                "not-need-init,startup-clear",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # If the broker dies (even by SIGKILL), the simulator goes with it,
            # so a restarted broker finds its state directory free.
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"swtpm exited at start: {err.strip()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("swtpm did not start listening")

    def stop(self) -> None:
        """Stop the simulator (its state stays on disk for the next start)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> Swtpm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
