"""Hostile plugins: each way out of the sandbox is tried and stopped, with the reason."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import biscuit_auth as biscuit
import pytest

from appliance.box import open_box
from appliance.broker.service import Broker
from appliance.config import Config
from appliance.errors import ApplianceError
from appliance.plugins import package
from appliance.plugins.package import PluginRefused
from tests.pairing import paired
from tests.plugins.conftest import PUBLISHER, entries, hostile_manifest, make_plugin
from tests.remote import remote_hub


def stopped(broker: Broker, verb: str, value: object = None) -> ApplianceError:
    with pytest.raises(ApplianceError) as info:
        broker.run_plugin(paired(broker), "hostile", verb, value)
    err = info.value
    assert err.reason.startswith("plugin hostile 6.6.6 (run run_"), err.reason
    assert entries(broker, "plugin.stopped")[-1]["code"] == err.code
    return err


# ------------------------------------------------------------------ limits
def test_endless_loop_is_stopped_by_fuel(broker: Broker, install) -> None:
    install("hostile")
    err = stopped(broker, "spin")
    assert err.code == "plugin_out_of_fuel"
    assert "used all its fuel" in err.reason


def test_memory_bomb_is_stopped_at_the_limit(broker: Broker, install) -> None:
    install("hostile")
    err = stopped(broker, "bomb")
    assert err.code == "plugin_memory_limit"
    assert "memory limit (8 MiB)" in err.reason


def test_log_flood_is_stopped(broker: Broker, install) -> None:
    install("hostile")
    err = stopped(broker, "logflood")
    assert err.code == "plugin_log_limit"
    assert "more than 50 log lines" in err.reason


def test_output_flood_is_stopped(broker: Broker, install) -> None:
    install("hostile")
    err = stopped(broker, "outflood")
    assert err.code == "plugin_output_limit"
    assert f"over {16 << 10} bytes" in err.reason


# ------------------------------------------------------------------ files
@pytest.mark.parametrize(
    ("resource", "why"),
    [
        ("/etc/passwd", "must start with 'share:'"),
        ("share:docs/../../../etc/passwd", "'..' components are not allowed"),
        ("share:docs/Inbox/\x00a.pdf", "NUL byte"),
        ("share:docs//etc/passwd", "absolute paths are not allowed"),
        ("share:secret/keys.txt", "does not grant file.read on share 'secret'"),
        ("share:etc/passwd", "unknown share 'etc'"),
        ("share:docs/link", "is a symlink"),
        ("share:docs/dirlink/passwd", "is a symlink"),
    ],
)
def test_reading_outside_its_shares_is_stopped(
    broker: Broker, install, shares: dict[str, Path], resource: str, why: str
) -> None:
    os.symlink("/etc/passwd", shares["docs"] / "link")
    os.symlink("/etc", shares["docs"] / "dirlink")
    install("hostile")
    err = stopped(broker, "read", resource)
    assert why in err.reason
    assert "root:" not in err.reason
    refused = entries(broker, "plugin.call_refused")[-1]
    assert refused["op"] == "file.read" and refused["plugin"] == "hostile"
    assert not entries(broker, "plugin.call")  # nothing was read


def test_reading_inside_its_grant_works(broker: Broker, install, laptop: str) -> None:
    install("hostile")
    out = broker.run_plugin(laptop, "hostile", "read", "share:docs/Inbox/a.pdf")
    assert out["output"] == "%PDF a"
    assert entries(broker, "plugin.call")[-1]["resource"] == "share:docs/Inbox/a.pdf"


def test_writing_outside_its_grant_is_stopped(
    broker: Broker, install, shares: dict[str, Path]
) -> None:
    install("hostile")  # may read docs, write nothing
    err = stopped(broker, "write", "share:docs/Inbox/a.pdf")
    assert err.code == "capability_refused"
    assert "does not grant file.write on share 'docs'" in err.reason
    assert (shares["docs"] / "Inbox" / "a.pdf").read_bytes() == b"%PDF a"
    assert not broker.plans.db.all("SELECT plan_id FROM plans")


def test_calling_a_host_not_on_its_list_is_stopped(broker: Broker, install) -> None:
    install("hostile")
    err = stopped(broker, "fetch", "http://127.0.0.1:9/steal?x=1")
    assert err.code == "capability_refused"
    assert "does not grant http.request on http://127.0.0.1:9" in err.reason
    assert not entries(broker, "plugin.http")


# ------------------------------------------------------------------ tokens
def test_a_forged_token_is_refused(broker: Broker, install) -> None:
    install("hostile")
    other = biscuit.KeyPair()
    forged = (
        biscuit.BiscuitBuilder('plugin_run("x"); grant_read("secret");')
        .build(other.private_key)
        .to_base64()
    )
    err = stopped(broker, "present", {"token": forged, "resource": "share:secret/"})
    assert err.code == "token_forged"


def test_a_token_from_another_run_is_refused(broker: Broker, install, laptop: str) -> None:
    install("hostile")
    leaked = broker.run_plugin(laptop, "hostile", "leak")["output"]
    err = stopped(broker, "present", {"token": leaked, "resource": "share:docs/"})
    assert err.code == "token_mismatch"
    assert "another plugin run" in err.reason


def test_a_widened_token_is_refused(broker: Broker, install) -> None:
    """Anyone holding a Biscuit can append a block; a block claiming a wider
    grant changes nothing the grant check believes."""
    install("hostile")
    plugin = broker.plugins.store.get("hostile")
    from appliance.issuer.plugin_tokens import (
        PluginCall,
        PluginGrant,
        mint_plugin,
        verify_plugin_call,
    )

    token, source = mint_plugin(
        broker.tokens,
        run_id="run_1",
        plugin="hostile",
        plugin_sha256=plugin.sha256,
        requester="laptop",
        grant=PluginGrant(read=("docs",)),
        ttl_s=60,
    )
    parsed = biscuit.Biscuit.from_base64(token, broker.tokens._public)
    widened = parsed.append(
        biscuit.BlockBuilder('grant_read("secret"); grant_write("secret"); op("file.read");')
    ).to_base64()

    def check(tok: str, share: str, op: str = "file.read") -> None:
        verify_plugin_call(
            broker.tokens,
            tok,
            run_id="run_1",
            plugin_sha256=plugin.sha256,
            grant_source=source,
            call=PluginCall(op, share=share, to_share=share),
        )

    check(widened, "docs")  # attenuation keeps what was granted
    for share, op in (("secret", "file.read"), ("secret", "file.write"), ("docs", "file.write")):
        with pytest.raises(ApplianceError) as info:
            check(widened, share, op)
        assert info.value.code == "capability_refused"
    # The token without its grant block (wider than any grant) is refused too.
    bare = biscuit.BiscuitBuilder(
        'plugin_run("run_1"); plugin_sha256({h}); token_id("x"); epoch(0);', {"h": plugin.sha256}
    ).build(broker.keystore.token_root().private_key)
    with pytest.raises(ApplianceError) as info:
        check(bare.to_base64(), "docs")
    assert "grant block" in info.value.reason


# ------------------------------------------------------------------ loading
def test_unsigned_tampered_and_unpinned_plugins_do_not_load(
    broker: Broker, tmp_path: Path, modules: dict[str, bytes], publisher_key: tuple[Path, str]
) -> None:
    key = publisher_key[0]
    store = broker.plugins.store

    unsigned = make_plugin(tmp_path / "u", modules["hostile"], hostile_manifest(), key, sign=False)
    with pytest.raises(PluginRefused) as info:
        store.install(unsigned)
    assert info.value.code == "plugin_unsigned" and "signature is missing" in info.value.reason

    module = make_plugin(tmp_path / "m", modules["hostile"], hostile_manifest(), key)
    (module / "plugin.wasm").write_bytes(modules["organise-by-date"])
    with pytest.raises(PluginRefused) as info:
        store.install(module)
    assert info.value.code == "plugin_tampered" and "module was changed" in info.value.reason

    manifest = make_plugin(tmp_path / "n", modules["hostile"], hostile_manifest(), key)
    data = json.loads((manifest / "manifest.json").read_text())
    data["capabilities"]["read"].append("secret")
    (manifest / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(PluginRefused) as info:
        store.install(manifest)
    assert info.value.code == "plugin_tampered" and "signature does not verify" in info.value.reason

    stranger = tmp_path / "stranger.pem"
    package.keygen(stranger)
    other = dict(hostile_manifest(), publisher="someone-else")
    unpinned = make_plugin(tmp_path / "p", modules["hostile"], other, stranger)
    with pytest.raises(PluginRefused) as info:
        store.install(unpinned)
    assert info.value.code == "plugin_unpinned" and "not pinned" in info.value.reason

    # Signed with another key under the pinned publisher's name.
    impostor = make_plugin(tmp_path / "i", modules["hostile"], hostile_manifest(), stranger)
    with pytest.raises(PluginRefused) as info:
        store.install(impostor)
    assert info.value.code == "plugin_tampered"
    assert store.names() == []


def test_a_plugin_tampered_after_install_does_not_run(
    broker: Broker, install, modules: dict[str, bytes], laptop: str
) -> None:
    install("hostile")
    installed = broker.config.plugins_dir / "hostile"
    (installed / "plugin.wasm").write_bytes(modules["hostile"] + b"\x00")
    with pytest.raises(PluginRefused) as info:
        broker.run_plugin(laptop, "hostile", "leak", None)
    assert info.value.code == "plugin_tampered"
    assert entries(broker, "plugin.refused")[-1]["error"]["code"] == "plugin_tampered"
    assert broker.plugins.list()[0]["status"] == "refused"
    shutil.rmtree(installed)


def test_a_module_importing_wasi_is_refused(
    broker: Broker, tmp_path: Path, publisher_key: tuple[Path, str], laptop: str
) -> None:
    import wasmtime

    wasm = wasmtime.wat2wasm(
        '(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32)'
        ' (result i32))) (memory (export "memory") 1) (func (export "leak")))'
    )
    manifest = dict(hostile_manifest(), name="wasi")
    folder = make_plugin(tmp_path / "w", bytes(wasm), manifest, publisher_key[0])
    broker.plugins.store.install(folder)
    with pytest.raises(ApplianceError) as info:
        broker.run_plugin(laptop, "wasi", "leak", None)
    assert info.value.code == "plugin_invalid"
    assert "wasi_snapshot_preview1.fd_write" in info.value.reason
    assert PUBLISHER in broker.config.plugin_publishers


def test_a_run_past_its_wall_clock_is_stopped(broker: Broker, install) -> None:
    import dataclasses

    install("hostile")
    broker.plugins.limits = dataclasses.replace(broker.plugins.limits, seconds=0)
    err = stopped(broker, "read", "share:docs/Inbox/a.pdf")
    assert err.code == "plugin_time_limit"
    assert not entries(broker, "plugin.call")


def test_a_verb_with_the_wrong_signature_is_refused(
    broker: Broker, tmp_path: Path, publisher_key: tuple[Path, str], laptop: str
) -> None:
    import wasmtime

    wasm = wasmtime.wat2wasm(
        '(module (memory (export "memory") 1) (func (export "leak") (param i32) (result i32)'
        " local.get 0))"
    )
    folder = make_plugin(
        tmp_path / "s", bytes(wasm), dict(hostile_manifest(), name="sig"), publisher_key[0]
    )
    broker.plugins.store.install(folder)
    with pytest.raises(ApplianceError) as info:
        broker.run_plugin(laptop, "sig", "leak", None)
    assert (
        info.value.code == "plugin_invalid" and "taking and returning nothing" in info.value.reason
    )


def exfil_manifest(origin: str) -> dict:
    manifest = hostile_manifest()
    manifest["capabilities"]["hosts"] = [origin]
    return manifest


def test_content_read_in_a_run_does_not_leave_without_a_press(
    broker: Broker, install, laptop: str, shares: dict[str, Path]
) -> None:
    """Its manifest lists the host and the owner's policy allows it: still,
    once the run has read a file, nothing goes out without a press."""
    with remote_hub() as hub:
        install("hostile", exfil_manifest(hub.origin))
        (shares["docs"] / "Inbox" / "tax.txt").write_text("SECRET-INCOME-42")
        args = {"resource": "share:docs/Inbox/tax.txt", "url": hub.origin + "/api/notify"}
        broker.run_plugin(laptop, "hostile", "exfil", args)
        assert hub.received == []
        (refused,) = [
            e["data"] for e in broker.audit.entries(0, 10_000) if e["kind"] == "plugin.call_refused"
        ]
        assert refused["error"]["code"] == "needs_approval"
        assert "read file content" in refused["error"]["reason"]
        text = json.dumps(broker.audit.entries(0, 10_000))
        assert "SECRET-INCOME-42" not in text


def test_an_owner_may_let_one_host_receive_content_and_the_query_leaves_a_trace(
    tmp_path: Path, shares: dict[str, Path], publisher_key, modules
) -> None:
    from appliance.config import DEFAULT_POLICY_DIR

    hub_context = remote_hub()
    hub = hub_context.__enter__()
    policies = tmp_path / "policies"
    shutil.copytree(DEFAULT_POLICY_DIR, policies)
    (policies / "local.cedar").write_text(
        '@id("hub-may-receive") @reason("The hub may receive file content.") @risk("medium")\n'
        'permit (principal, action == Action::"net.request", resource)'
        f' when {{ context.host == "{hub.origin}" }};\n'
    )
    b = open_box(
        Config(
            state_dir=tmp_path / "state",
            shares=shares,
            dev=True,
            keystore="dev",
            policy_dir=policies,
            plugin_publishers={PUBLISHER: publisher_key[1]},
        )
    )
    try:
        folder = make_plugin(
            tmp_path / "dist", modules["hostile"], exfil_manifest(hub.origin), publisher_key[0]
        )
        b.plugins.install(folder)
        (shares["docs"] / "Inbox" / "tax.txt").write_text("SECRET-INCOME-42")
        args = {"resource": "share:docs/Inbox/tax.txt", "url": hub.origin + "/api/notify"}
        b.run_plugin(paired(b), "hostile", "exfil", args)
        assert hub.received and "SECRET-INCOME-42" in hub.received[0]["path"]
        (sent,) = [e["data"] for e in b.audit.entries(0, 10_000) if e["kind"] == "plugin.http"]
        assert sent["after_read"] is True and sent["query_sha256"]
        assert "SECRET-INCOME-42" not in json.dumps(b.audit.entries(0, 10_000))
    finally:
        b.close()
        hub_context.__exit__(None, None, None)


@pytest.mark.parametrize("where", ["loopback", "own LAN address", "localhost name"])
def test_a_plugin_never_reaches_the_box_itself(
    broker: Broker, install, laptop: str, where: str
) -> None:
    """Its manifest may list the box's own addresses; the broker still never
    connects to them (the LAN API, a local model server, the development TPM)."""
    with remote_hub() as hub:
        target = {
            "loopback": "http://127.0.0.1:8443",
            "own LAN address": f"http://{hub.box_address}:8443",
            "localhost name": "http://localhost:8443",
        }[where]
        manifest = hostile_manifest()
        manifest["capabilities"]["hosts"] = [target]
        install("hostile", manifest)
        err = stopped(broker, "fetch", target + "/v1/pairings")
        assert err.code == "own_address" and "never reaches the box" in err.reason
        (refused,) = entries(broker, "plugin.call_refused")
        assert refused["error"]["code"] == "own_address"
