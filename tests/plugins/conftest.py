"""Plugins built from source (AssemblyScript), signed by a test publisher, run
by a real broker on real shares."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.box import open_box
from appliance.broker.service import Broker
from appliance.config import ApprovalSettings, Config, PluginLimits
from appliance.plugins import package
from appliance.plugins.build import TOOLCHAIN, compile_plugin
from tests.pairing import paired

HOSTILE = Path(__file__).parent / "hostile"
SOURCES = {
    "organise-by-date": TOOLCHAIN / "organise-by-date",
    "ha-notify": TOOLCHAIN / "ha-notify",
    "hostile": HOSTILE,
}
PUBLISHER = "appliance-examples"
LIMITS = PluginLimits(fuel=50_000_000, memory_bytes=8 << 20, log_lines=50, output_bytes=16 << 10)


@pytest.fixture(scope="session")
def modules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Each plugin compiled from its source by the pinned AssemblyScript."""
    out = tmp_path_factory.mktemp("wasm")
    return {
        name: compile_plugin(src, out / f"{name}.wasm").read_bytes()
        for name, src in SOURCES.items()
    }


@pytest.fixture(scope="session")
def publisher_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("publisher") / "key.pem"
    return path, package.keygen(path)


def hostile_manifest() -> dict[str, Any]:
    verbs = ["spin", "bomb", "read", "write", "fetch", "leak", "present", "logflood", "outflood"]
    verbs += ["exfil"]
    return {
        "name": "hostile",
        "version": "6.6.6",
        "publisher": PUBLISHER,
        "verbs": {v: v for v in verbs},
        "capabilities": {"read": ["docs"], "write": [], "hosts": []},
    }


def make_plugin(
    root: Path, module: bytes, manifest: dict[str, Any], key: Path, sign: bool = True
) -> Path:
    """A plugin folder as a publisher ships it."""
    folder = root / manifest["name"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / package.MODULE).write_bytes(module)
    (folder / package.MANIFEST).write_text(json.dumps(manifest))
    if sign:
        package.sign(folder, key)
    return folder


@pytest.fixture
def shares(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name in ("docs", "photos", "secret"):
        out[name] = tmp_path / "shares" / name
        out[name].mkdir(parents=True)
    (out["docs"] / "Inbox").mkdir()
    (out["docs"] / "Inbox" / "a.pdf").write_bytes(b"%PDF a")
    (out["docs"] / "Inbox" / "b.pdf").write_bytes(b"%PDF b")
    (out["secret"] / "keys.txt").write_text("do not read")
    return out


@pytest.fixture
def broker(
    tmp_path: Path, shares: dict[str, Path], publisher_key: tuple[Path, str]
) -> Iterator[Broker]:
    config = Config(
        state_dir=tmp_path / "state",
        shares=shares,
        dev=True,
        keystore="dev",
        approvals=ApprovalSettings(timeout_s=30, arming_delay_s=0.0, queue_size=2),
        plugin_publishers={PUBLISHER: publisher_key[1]},
        plugin_limits=LIMITS,
    )
    b = open_box(config)
    yield b
    b.close()


@pytest.fixture
def install(
    broker: Broker, tmp_path: Path, modules: dict[str, bytes], publisher_key: tuple[Path, str]
):
    """Sign and install a plugin: install("hostile") or install(name, manifest=...)."""

    def go(name: str, manifest: dict[str, Any] | None = None) -> package.Plugin:
        if manifest is None:
            manifest = (
                hostile_manifest()
                if name == "hostile"
                else json.loads((SOURCES[name] / "manifest.json").read_text())
            )
        folder = make_plugin(tmp_path / "dist", modules[name], manifest, publisher_key[0])
        return broker.plugins.store.install(folder)

    return go


def entries(broker: Broker, kind: str) -> list[dict[str, Any]]:
    out, start = [], 0
    while batch := broker.audit.entries(start, 1000):
        out += [e["data"] for e in batch if e["kind"] == kind]
        start += len(batch)
    return out


@pytest.fixture
def laptop(broker: Broker) -> str:
    """The client id of a desktop paired to read and change every share."""
    return paired(broker)
