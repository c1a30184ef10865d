"""The two shipped plugins, built from source, end to end: organise-by-date
through the real server with a press of the (virtual) button, ha-notify
against a local HTTP endpoint on its allow-list; and the plugin API."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from appliance.api.app import create_app
from appliance.box import open_box
from appliance.broker.service import Broker
from tests.e2e.conftest import Box
from tests.pairing import paired
from tests.plugins.conftest import PUBLISHER, SOURCES, entries, make_plugin
from tests.remote import RemoteHub, remote_hub


@pytest.fixture
def hub() -> Iterator[RemoteHub]:
    """A home-automation endpoint on another host (not the box) that records
    what it is sent."""
    with remote_hub() as h:
        yield h


def notify_manifest(origin: str) -> dict:
    manifest = json.loads((SOURCES["ha-notify"] / "manifest.json").read_text())
    manifest["capabilities"]["hosts"] = [origin]
    return manifest


def test_ha_notify_calls_its_allow_listed_endpoint(
    broker: Broker, install, hub: RemoteHub, laptop: str
) -> None:
    install("ha-notify", notify_manifest(hub.origin))
    out = broker.run_plugin(
        laptop,
        "ha-notify",
        "notify",
        {"folder": "share:docs/Inbox", "url": hub.origin + "/api/notify"},
    )
    assert out["output"] == {"sent": True, "status": 200, "files": 2}
    assert hub.received == [
        {
            "path": "/api/notify",
            "body": {
                "title": "appliance",
                "message": "2 file(s) waiting in share:docs/Inbox: a.pdf, b.pdf",
            },
        }
    ]
    assert out["logs"] == ["notified: HTTP 200"]
    sent = entries(broker, "plugin.http")[-1]
    assert sent["origin"] == hub.origin and sent["status"] == 200 and sent["method"] == "POST"
    assert out["plan"] is None  # it changed nothing


def test_ha_notify_cannot_reach_another_port(
    broker: Broker, install, hub: RemoteHub, laptop: str
) -> None:
    install("ha-notify", notify_manifest(hub.origin))
    with remote_hub(port=8124) as other:
        with pytest.raises(Exception) as info:
            broker.run_plugin(
                laptop, "ha-notify", "notify", {"folder": "share:docs/Inbox", "url": other.origin}
            )
        assert getattr(info.value, "code", "") == "capability_refused"
        assert other.received == [] and hub.received == []


def test_owner_policy_can_forbid_a_listed_host(
    tmp_path: Path, shares: dict[str, Path], publisher_key, modules, hub: RemoteHub
) -> None:
    import shutil

    from appliance.config import DEFAULT_POLICY_DIR, Config

    policies = tmp_path / "policies"
    shutil.copytree(DEFAULT_POLICY_DIR, policies)
    (policies / "local.cedar").write_text(
        '@id("no-hub") @reason("The hub is off limits.") @risk("high")\n'
        'forbid (principal, action == Action::"net.request", resource)'
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
            tmp_path / "dist", modules["ha-notify"], notify_manifest(hub.origin), publisher_key[0]
        )
        b.plugins.install(folder)
        with pytest.raises(Exception) as info:
            b.run_plugin(
                paired(b), "ha-notify", "notify", {"folder": "share:docs/", "url": hub.origin}
            )
        assert info.value.code == "denied" and "The hub is off limits." in info.value.reason
        assert hub.received == []
    finally:
        b.close()


def test_plugin_api(broker: Broker, install) -> None:
    from tests.unit.test_api import pair

    install("hostile")
    http = TestClient(create_app(broker))
    http.headers["Authorization"] = "Bearer " + pair(http, broker)
    listed = http.get("/v1/plugins").json()["plugins"]
    assert [(p["name"], p["version"], p["status"]) for p in listed] == [("hostile", "6.6.6", "ok")]
    r = http.post(
        "/v1/plugins/hostile/run", json={"verb": "read", "input": "share:docs/Inbox/b.pdf"}
    )
    assert r.status_code == 200 and r.json()["output"] == "%PDF b"
    r = http.post("/v1/plugins/hostile/run", json={"verb": "spin"})
    assert r.status_code == 422 and r.json()["code"] == "plugin_out_of_fuel"
    assert http.post("/v1/plugins/nope/run", json={"verb": "x"}).status_code == 404
    r = http.post("/v1/plugins/hostile/run", json={"verb": "nope"})
    assert r.status_code == 404 and "has no verb 'nope'" in r.json()["reason"]
    assert http.post("/v1/plugins/hostile/run", json={"verb": "x", "extra": 1}).status_code == 422
    assert TestClient(create_app(broker)).get("/v1/plugins").status_code == 401


@pytest.mark.e2e
def test_organise_by_date_end_to_end(
    tmp_path: Path, modules: dict[str, bytes], publisher_key: tuple[Path, str]
) -> None:
    """The real server: install with the CLI, run over the LAN API, the moves
    wait for a press of the virtual panel, then run and are audited."""
    photos = tmp_path / "photos"
    (photos / "Inbox").mkdir(parents=True)
    (photos / "By date").mkdir()
    when = {
        "beach.jpg": dt.datetime(2023, 5, 17, 12, tzinfo=dt.UTC),
        "snow.jpg": dt.datetime(2024, 1, 2, 9, tzinfo=dt.UTC),
        "party.jpg": dt.datetime(2023, 5, 31, 23, tzinfo=dt.UTC),
    }
    for name, t in when.items():
        (photos / "Inbox" / name).write_bytes(name.encode())
        os.utime(photos / "Inbox" / name, (t.timestamp(), t.timestamp()))
    config = tmp_path / "appliance.toml"
    # Not about trusted arming (tests/console/): the CLI's press may approve
    # the content-derived moves without the console showing them first.
    config.write_text(
        f'[plugin_publishers]\n{PUBLISHER} = "{publisher_key[1]}"\n'
        '[approvals]\nconsole_content = false\nconsole_risk = ""\n'
    )
    manifest = json.loads((SOURCES["organise-by-date"] / "manifest.json").read_text())
    folder = make_plugin(tmp_path / "dist", modules["organise-by-date"], manifest, publisher_key[0])

    box = Box(tmp_path / "box")
    box.extra += ["--config", str(config), "--share", f"photos={photos}"]
    box.start()
    try:
        state = ["--state-dir", str(box.state)]
        installed = json.loads(box.cli("plugins", "install", str(folder), *state, "--json").stdout)
        assert installed["name"] == "organise-by-date" and installed["version"] == "1.0.0"
        verified = json.loads(
            box.cli("plugins", "verify", "organise-by-date", *state, "--json").stdout
        )
        assert verified["status"] == "ok" and verified["sha256"] == installed["sha256"]
        client = box.pair(grant={"shares": {"photos": "read-write"}})
        r = client.post(
            "/v1/plugins/organise-by-date/run",
            json={
                "verb": "propose",
                "input": {"source": "share:photos/Inbox", "dest": "share:photos/By date"},
            },
        )
        assert r.status_code == 202, r.text
        run = r.json()
        assert run["output"] == {"moves": 3, "folders": 2}
        plan = run["plan"]
        assert plan["status"] == "pending_approval"
        assert sorted(p.name for p in (photos / "Inbox").iterdir()) == sorted(when)  # not yet
        shown = client.get("/v1/approvals").json()
        assert "[plugin organise-by-date 1.0.0 (sha256 " in json.dumps(shown)
        box.press()
        done = client.get(f"/v1/plans/{plan['plan_id']}", params={"wait": 30}).json()
        assert done["status"] == "done", done
        assert list((photos / "Inbox").iterdir()) == []
        assert (photos / "By date" / "2023-05" / "beach.jpg").read_bytes() == b"beach.jpg"
        assert (photos / "By date" / "2023-05" / "party.jpg").exists()
        assert (photos / "By date" / "2024-01" / "snow.jpg").exists()

        log = client.get("/v1/audit", params={"limit": 1000}).json()["entries"]
        started = [e["data"] for e in log if e["kind"] == "plugin.started"]
        assert started[0]["plugin"] == "organise-by-date"
        assert started[0]["version"] == "1.0.0" and started[0]["sha256"] == installed["sha256"]
        decided = [e["data"] for e in log if e["kind"] == "plan.decided"][-1]
        assert all(i["derived_fields"] for i in decided["intents"])  # a plugin's, not typed

        box.cli("plugins", "remove", "organise-by-date", *state)
        assert json.loads(box.cli("plugins", "list", *state, "--json").stdout) == {"plugins": []}
    finally:
        box.stop()
