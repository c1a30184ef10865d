"""A development box served by uvicorn on a thread (plain HTTP, or TLS with
its device certificate), so the client library is tested over real sockets."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from appliance.api.app import create_app
from appliance.api.tls import ensure_certificate
from appliance.box import open_box
from appliance.broker.service import Broker
from appliance.config import ApprovalSettings, Config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    broker: Broker
    url: str
    share: Path
    fingerprint: str | None = None

    def credential(self, name: str = "desk") -> str:
        verify = not self.url.startswith("https")  # the test asks over TLS unpinned
        grant = {"shares": {"docs": "read-write"}}
        r = httpx.post(
            f"{self.url}/v1/pairings", json={"name": name, "grant": grant}, verify=verify
        )
        assert r.status_code == 202, r.text
        assert self.broker.approvals.press("approve", source="test").accepted
        out = httpx.get(f"{self.url}/v1/pairings/{r.json()['pairing_id']}", verify=verify)
        return str(out.json()["credential"])

    def press(self, decision: str = "approve") -> None:
        """Approve (or deny) whatever the panel shows once it shows something."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.broker.approvals.current() is not None:
                assert self.broker.approvals.press(decision, source="test").accepted
                return
            time.sleep(0.02)
        raise AssertionError("nothing was shown on the panel")


def serve(tmp_path: Path, tls: bool) -> Iterator[Served]:
    share = tmp_path / "share"
    (share / "Inbox").mkdir(parents=True)
    (share / "Inbox" / "a.txt").write_text("alpha")
    broker = open_box(
        Config(
            state_dir=tmp_path / "state",
            shares={"docs": share},
            dev=True,
            keystore="dev",
            approvals=ApprovalSettings(timeout_s=30, arming_delay_s=0.0),
        )
    )
    port = free_port()
    extra: dict[str, str] = {}
    fp = None
    if tls:
        cert, key, fp = ensure_certificate(tmp_path / "tls", ["127.0.0.1"])
        extra = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(broker), host="127.0.0.1", port=port, log_level="warning", **extra
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield Served(broker, f"{'https' if tls else 'http'}://127.0.0.1:{port}", share, fp)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        broker.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    yield from serve(tmp_path, tls=False)


@pytest.fixture
def served_tls(tmp_path: Path) -> Iterator[Served]:
    yield from serve(tmp_path, tls=True)
