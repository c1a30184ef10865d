"""A box as an attacker meets it: a real broker (``open_box``) on a real
share, its LAN API in process with a paired desktop, and what the suite
compares before and after an attack: the files in the share and the audit
log."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from appliance.api.app import create_app
from appliance.box import open_box
from appliance.broker.service import Broker
from appliance.config import ApprovalSettings, Config
from appliance.plugins import package
from appliance.plugins.build import compile_plugin
from tests.plugins.conftest import HOSTILE, PUBLISHER, hostile_manifest, make_plugin
from tests.unit.test_api import pair

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def share(tmp_path: Path) -> Path:
    root = tmp_path / "share"
    (root / "Inbox").mkdir(parents=True)
    (root / "Inbox" / "a.pdf").write_bytes(b"%PDF a")
    (root / "Inbox" / "b.txt").write_text("hello")
    return root


@pytest.fixture(scope="session")
def publisher(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("publisher") / "key.pem"
    return path, package.keygen(path)


@pytest.fixture
def broker(tmp_path: Path, share: Path, publisher: tuple[Path, str]) -> Iterator[Broker]:
    b = open_box(
        Config(
            state_dir=tmp_path / "state",
            shares={"docs": share},
            dev=True,
            keystore="dev",
            approvals=ApprovalSettings(timeout_s=30, arming_delay_s=0.0, queue_size=4),
            plugin_publishers={PUBLISHER: publisher[1]},
        )
    )
    yield b
    b.close()


@pytest.fixture
def http(broker: Broker) -> TestClient:
    client = TestClient(create_app(broker), raise_server_exceptions=False)
    client.headers["Authorization"] = "Bearer " + pair(client, broker)
    return client


@pytest.fixture
def anonymous(broker: Broker) -> TestClient:
    return TestClient(create_app(broker), raise_server_exceptions=False)


class Witness:
    """What an attack must leave as it was: every file in the share (path and
    content digest) and the audit log (its length)."""

    def __init__(self, broker: Broker, share: Path):
        self.broker = broker
        self.share = share
        self.files = self.tree()
        self.log_size = broker.audit.size

    def tree(self) -> dict[str, str]:
        return {
            str(p.relative_to(self.share)): (
                hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            )
            for p in sorted(self.share.rglob("*"))
        }

    def new_entries(self) -> list[dict[str, Any]]:
        return self.broker.audit.entries(self.log_size, 10_000)

    def unchanged(self) -> None:
        assert self.tree() == self.files, "the share changed"
        assert self.new_entries() == [], "the audit log grew"


@pytest.fixture
def witness(broker: Broker, share: Path) -> Witness:
    return Witness(broker, share)


@pytest.fixture(scope="session")
def hostile_module(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    out = tmp_path_factory.mktemp("wasm") / "hostile.wasm"
    return compile_plugin(HOSTILE, out).read_bytes()


@pytest.fixture
def install_hostile(
    broker: Broker, tmp_path: Path, hostile_module: bytes, publisher: tuple[Path, str]
):
    """Sign and install the hostile plugin, optionally allowed some web origins."""

    def go(hosts: tuple[str, ...] = ()) -> package.Plugin:
        manifest = hostile_manifest()
        manifest["capabilities"]["hosts"] = list(hosts)
        folder = make_plugin(tmp_path / "dist", hostile_module, manifest, publisher[0])
        return broker.plugins.store.install(folder)

    return go


UNICODE_PLUGIN = Path(__file__).parent / "unicode_plugin"


@pytest.fixture(scope="session")
def unicode_module(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    out = tmp_path_factory.mktemp("wasm") / "unicode.wasm"
    return compile_plugin(UNICODE_PLUGIN, out).read_bytes()


@pytest.fixture
def install_unicode(
    broker: Broker, tmp_path: Path, unicode_module: bytes, publisher: tuple[Path, str]
):
    """Sign and install the plugin that speaks broken Unicode (unicode_plugin/)."""

    def go() -> package.Plugin:
        manifest = {
            "name": "unicode",
            "version": "1.0.0",
            "publisher": PUBLISHER,
            "verbs": {v: v for v in ("url", "body", "write", "output", "nan")},
            "capabilities": {"read": ["docs"], "write": ["docs"], "hosts": ["http://127.0.0.1:9"]},
        }
        folder = make_plugin(tmp_path / "dist", unicode_module, manifest, publisher[0])
        return broker.plugins.store.install(folder)

    return go
