"""The plugin package: manifests that are malformed are refused with the
field named; the publisher's commands (keygen, sign) make a plugin that loads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.plugins import package
from appliance.plugins.package import Manifest, PluginRefused, normalise_origin

GOOD = {
    "name": "p",
    "version": "1.0.0",
    "publisher": "acme",
    "module_sha256": "0" * 64,
    "verbs": {"run": "does it"},
    "capabilities": {"read": ["docs"], "write": [], "hosts": ["http://Hub.local"]},
}


def test_a_good_manifest_parses_with_one_spelling_per_origin() -> None:
    m = Manifest.parse(json.dumps(GOOD).encode())
    assert m.grant.read == ("docs",) and m.grant.hosts == ("http://hub.local:80",)
    assert normalise_origin("https://x") == "https://x:443"


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"name": "../evil"}, "name is missing or malformed"),
        ({"verbs": {}}, "verbs must map"),
        ({"verbs": {"run(": "x"}}, "verbs must map"),
        ({"capabilities": {"read": ["../etc"]}}, "capabilities.read is malformed"),
        ({"capabilities": {"hosts": ["ftp://x"]}}, "capabilities.hosts is malformed"),
        ({"capabilities": {"hosts": ["http://user@x"]}}, "capabilities.hosts is malformed"),
        ({"capabilities": {"exec": ["sh"]}}, "capabilities takes read, write and hosts"),
        ({"module_sha256": "abc"}, "module_sha256 is missing or malformed"),
        ({"extra": 1}, "unknown fields ['extra']"),
    ],
)
def test_a_malformed_manifest_is_refused(change: dict, why: str) -> None:
    with pytest.raises(PluginRefused) as info:
        Manifest.parse(json.dumps({**GOOD, **change}).encode())
    assert why in info.value.reason


def test_not_json_is_refused() -> None:
    with pytest.raises(PluginRefused, match="is not JSON"):
        Manifest.parse(b"{nope")


def test_publisher_commands_make_a_plugin_that_loads(
    tmp_path: Path, modules: dict[str, bytes]
) -> None:
    def cli(*args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "appliance.cli", "plugins", *args, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    key = tmp_path / "publisher.pem"
    public = json.loads(cli("keygen", str(key)))["publisher_key"]
    assert key.stat().st_mode & 0o777 == 0o600
    folder = tmp_path / "organise-by-date"
    folder.mkdir()
    (folder / "plugin.wasm").write_bytes(modules["organise-by-date"])
    source = Path(__file__).resolve().parents[2] / "plugins" / "organise-by-date"
    (folder / "manifest.json").write_bytes((source / "manifest.json").read_bytes())
    signed = json.loads(cli("sign", str(folder), "--key", str(key)))
    assert signed["public_key"] == public
    plugin = package.load(folder, {"appliance-examples": public})
    assert plugin.sha256 == signed["module_sha256"]
    with pytest.raises(PluginRefused) as info:
        package.load(folder, {"appliance-examples": package.keygen(tmp_path / "other.pem")})
    assert info.value.code == "plugin_tampered"
