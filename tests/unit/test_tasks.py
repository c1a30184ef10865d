"""Tasks in plain words, broker side: whatever goes wrong with the agent, the
task ends with the reason and nothing is done."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.unit.test_api import make_broker, pair


@pytest.fixture
def setup(tmp_path: Path):
    share = tmp_path / "share"
    (share / "Inbox").mkdir(parents=True)
    (share / "Inbox" / "2021-invoice.pdf").write_bytes(b"%PDF")
    broker = make_broker(
        tmp_path, share, agent_socket=tmp_path / "no-agent.sock", agent_timeout_s=5
    )
    from appliance.api.app import create_app

    http = TestClient(create_app(broker))
    http.headers["Authorization"] = "Bearer " + pair(http, broker)
    yield broker, http, share
    broker.close()


def test_no_agent_running_fails_the_task_cleanly(setup) -> None:
    broker, http, share = setup
    r = http.post("/v1/tasks", json={"text": "sort the PDFs in my Inbox by year"})
    assert r.status_code == 202 and r.json()["status"] == "planning"
    task = http.get(f"/v1/tasks/{r.json()['task_id']}", params={"wait": 10}).json()
    assert task["status"] == "failed"
    assert "model is not running" in task["error"] and task["plan_id"] is None
    assert [e["event"] for e in task["events"]] == ["planning", "failed"]
    # Nothing but the listing (read-only plans under the desktop's grant) ran.
    verbs = {r["verb"] for r in broker.db.all("SELECT verb FROM actions")}
    assert verbs == {"file.list"}
    assert (share / "Inbox" / "2021-invoice.pdf").exists()
    kinds = [e["kind"] for e in broker.audit.entries(0, 1000)]
    assert "task.received" in kinds and "task.failed" in kinds
    # The words are not kept, only their hash.
    received = [e for e in broker.audit.entries(0, 1000) if e["kind"] == "task.received"][0]
    assert "sort the PDFs" not in json.dumps(received)


def test_events_stream_ends_with_the_task(setup) -> None:
    _, http, _ = setup
    task_id = http.post("/v1/tasks", json={"text": "list the Inbox"}).json()["task_id"]
    with http.stream("GET", f"/v1/tasks/{task_id}/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert events[0]["event"] == "planning" and events[-1]["event"] == "failed"


@pytest.mark.parametrize(
    "body", [{"text": ""}, {"text": "   "}, {"text": "x" * 4001}, {"text": 5}, {"words": "hi"}]
)
def test_bad_task_bodies(setup, body: dict) -> None:
    broker, http, _ = setup
    r = http.post("/v1/tasks", json=body)
    assert r.status_code == 422 and r.json()["reason"]
    assert broker.db.one("SELECT COUNT(*) AS n FROM tasks")["n"] == 0


def test_listing_has_names_only(setup) -> None:
    broker, _, share = setup
    (share / "Inbox" / "secret.txt").write_text("the content must never reach the planner")
    client_id = broker.clients.list()[0]["client_id"]
    listing = broker.tasks.listing(client_id)
    assert listing == {"docs": ["Inbox/", "Inbox/2021-invoice.pdf", "Inbox/secret.txt"]}


def test_unknown_task_is_404(setup) -> None:
    _, http, _ = setup
    assert http.get("/v1/tasks/task_nope").status_code == 404
    assert http.get("/v1/tasks/task_nope/events").status_code == 404


@pytest.mark.parametrize(
    "spec",
    [
        {"field": "year"},
        {"field": "Year", "type": "integer"},
        {"field": "y", "type": "path"},
        {"field": "y", "type": "integer", "to": "/etc"},
        {"field": "../x", "type": "string"},
    ],
)
def test_bad_from_content_refused(setup, spec: dict) -> None:
    broker, http, _ = setup
    r = http.post("/v1/tasks", json={"text": "sort by year", "from_content": spec})
    assert r.status_code == 422 and r.json()["reason"]
    assert broker.db.one("SELECT COUNT(*) AS n FROM tasks")["n"] == 0


def test_a_restart_ends_what_it_interrupted(tmp_path: Path) -> None:
    """A task its model was planning when the box stopped ends failed (ask
    again); a task whose plan waited for a press ends as its plan did. None
    stays "planning" or "pending_approval" forever."""
    from appliance.api.app import create_app
    from appliance.broker.tasks import TERMINAL

    share = tmp_path / "share"
    share.mkdir()
    broker = make_broker(tmp_path, share, agent_socket=tmp_path / "no-agent.sock")
    http = TestClient(create_app(broker))
    credential = pair(http, broker)
    http.headers["Authorization"] = "Bearer " + credential
    plan = http.post(
        "/v1/intents", json={"intents": [{"verb": "file.mkdir", "resource": "share:docs/A"}]}
    )
    assert plan.json()["status"] == "pending_approval", plan.text
    store = broker.tasks.tasks
    requester = credential.split(".")[0]
    planning = store.create(requester, "0" * 64)
    waiting = store.create(requester, "1" * 64)
    store.update(
        waiting, "pending_approval", status="pending_approval", plan_id=plan.json()["plan_id"]
    )
    broker.close()

    broker = make_broker(tmp_path, share, agent_socket=tmp_path / "no-agent.sock")
    try:
        http = TestClient(create_app(broker))
        http.headers["Authorization"] = "Bearer " + credential
        ended = http.get(f"/v1/tasks/{planning}", params={"wait": 10}).json()
        assert ended["status"] == "failed" and "restarted" in ended["error"]
        followed = http.get(f"/v1/tasks/{waiting}", params={"wait": 10}).json()
        now = http.get(f"/v1/plans/{plan.json()['plan_id']}").json()
        assert now["status"] in TERMINAL and followed["status"] == now["status"], (followed, now)
        assert not (share / "A").exists()
    finally:
        broker.close()
