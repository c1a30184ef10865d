"""A compromised or prompt-injected model: the agent process answers whatever
the attacker wants, over the real socket and the broker's real checks. What
it must never get: a change without a press, a name or a byte of a share the
requester may not read, its own words (a quoted file) in front of the
requester, or one desktop's tasks starving another's."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from appliance.agent.errors import ModelError
from appliance.agent.server import AgentServer
from tests.adversarial.desks import Box, open_test_box, wait_until

DOCS_RW = {"shares": {"docs": "read-write"}}


class Compromised:
    """The agent's planner, as the attacker writes it."""

    def __init__(self) -> None:
        self.backend = SimpleNamespace(model_id="evil-model", model_sha256="e" * 64)
        self.intents: list[dict[str, Any]] = []
        self.values: dict[str, Any] = {}
        self.fail: str | None = None
        self.listings: list[dict[str, list[str]]] = []
        self.contents: list[str] = []
        self.texts: list[str] = []
        self.gate: threading.Event | None = None

    def plan(self, text: str, listing: dict[str, list[str]]) -> SimpleNamespace:
        self.texts.append(text)
        self.listings.append(listing)
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail:
            raise ModelError(self.fail)
        result = {
            "intents": self.intents,
            "model_id": "evil-model",
            "model_sha256": "e" * 64,
            "seconds": 0.1,
            "tokens": 5,
        }
        return SimpleNamespace(to_dict=lambda: result)

    def extract(self, content: str, fields: dict[str, str]) -> dict[str, Any]:
        self.contents.append(content)
        return {"values": {f: self.values.get(f) for f in fields}, "model_id": "evil-model",
                "model_sha256": "e" * 64}  # fmt: skip


@pytest.fixture
def model() -> Compromised:
    return Compromised()


def boxed(tmp_path: Path, model: Compromised, **kw: Any) -> Iterator[Box]:
    sock = tmp_path / "agent.sock"
    server = AgentServer(sock, model, broker_uid=None)  # type: ignore[arg-type]
    server.serve_in_thread()
    try:
        yield from open_test_box(tmp_path / "box", agent_socket=sock, agent_timeout_s=20, **kw)
    finally:
        server.stop()


@pytest.fixture
def box(tmp_path: Path, model: Compromised) -> Iterator[Box]:
    yield from boxed(tmp_path, model)


def run_task(box: Box, desk: str, text: str = "tidy up", **extra: Any) -> dict[str, Any]:
    http = box.desks[desk]
    task = http.post("/v1/tasks", json={"text": text, **extra}).json()
    assert "task_id" in task, task
    return wait_until(
        lambda: (
            t
            if (t := http.get(f"/v1/tasks/{task['task_id']}").json())["status"]
            not in ("planning", "planned")
            else None
        )
    )


def test_the_model_sees_only_the_names_of_shares_the_desktop_may_read(
    box: Box, model: Compromised
) -> None:
    box.pair("desk", DOCS_RW)
    model.fail = "nothing to do"
    run_task(box, "desk")
    (listing,) = model.listings
    assert set(listing) == {"docs"} and "cat.jpg" not in json.dumps(listing)
    # The listing was read through the gate, under the desktop's grant, and is on record.
    reads = [e["data"] for e in box.broker.audit.entries(0, 10_000) if e["kind"] == "plan.read"]
    assert reads and all(r["requester"] == box.client_id("desk") for r in reads)


def test_a_change_the_model_proposed_waits_for_a_press_whatever_it_claims(
    tmp_path: Path, model: Compromised
) -> None:
    """The owner lets writes in docs run without a press; a desktop's own
    write does. The model's (labelled "requester" by the model itself) does not."""
    import shutil

    from appliance.config import DEFAULT_POLICY_DIR

    policies = tmp_path / "policies"
    shutil.copytree(DEFAULT_POLICY_DIR, policies)
    (policies / "local.cedar").write_text(
        '@id("docs-writes") @reason("Writing in docs needs no press.") @risk("low")\n'
        'permit (principal, action == Action::"file.write", resource in Share::"docs");\n'
    )
    write = {"verb": "file.write", "resource": "share:docs/note.txt", "params": {"content": "x"},
             "provenance": {"resource": "requester", "params.content": "requester"}}  # fmt: skip
    for box in boxed(tmp_path, model, policy_dir=policies):
        desk = box.pair("desk", DOCS_RW)
        own = desk.post("/v1/intents", json={"intents": [write]}).json()
        assert own["status"] == "done"  # the owner's rule, for what a person typed
        (box.docs / "note.txt").unlink()
        model.intents = [write]
        task = run_task(box, "desk")
        assert task["status"] == "pending_approval"
        (stored,) = box.broker.plans.actions(task["plan_id"])
        assert stored.provenance == {"resource": "model", "params.content": "model"}
        assert stored.decision == "approve" and "model proposed" in stored.reasons[0]
        assert not (box.docs / "note.txt").exists()


def test_an_owner_rule_that_says_so_lets_the_model_tidy(tmp_path: Path, model: Compromised) -> None:
    import shutil

    from appliance.config import DEFAULT_POLICY_DIR

    policies = tmp_path / "policies"
    shutil.copytree(DEFAULT_POLICY_DIR, policies)
    (policies / "local.cedar").write_text(
        '@id("docs-tidying") @reason("Tidying docs needs no press.") @risk("low")\n'
        '@model_proposals("allowed")\n'
        'permit (principal, action == Action::"file.mkdir", resource in Share::"docs");\n'
    )
    for box in boxed(tmp_path, model, policy_dir=policies):
        box.pair("desk", DOCS_RW)
        model.intents = [{"verb": "file.mkdir", "resource": "share:docs/2024"}]
        assert run_task(box, "desk")["status"] == "done"
        assert (box.docs / "2024").is_dir()


def test_the_model_cannot_reach_a_share_outside_the_grant(box: Box, model: Compromised) -> None:
    box.pair("desk", DOCS_RW)
    model.intents = [{"verb": "file.read", "resource": "share:photos/cat.jpg"}]
    task = run_task(box, "desk")
    assert task["status"] == "failed" and task["plan_id"] is None
    touched = [r["resource"] for r in box.broker.db.all("SELECT resource FROM actions")]
    assert touched and not any(r.startswith("share:photos") for r in touched)


def test_content_is_read_through_the_gate_or_not_at_all(tmp_path: Path, model: Compromised) -> None:
    """The owner forbids reading docs/Private: a task's from_content read of a
    file there is refused like any read, and the extractor never sees it."""
    import shutil

    from appliance.config import DEFAULT_POLICY_DIR

    policies = tmp_path / "policies"
    shutil.copytree(DEFAULT_POLICY_DIR, policies)
    (policies / "local.cedar").write_text(
        '@id("private") @reason("Private stays private.") @risk("high")\n'
        'forbid (principal, action == Action::"file.read", resource)'
        ' when { context.path like "Private/*" };\n'
    )
    for box in boxed(tmp_path, model, policy_dir=policies):
        (box.docs / "Private").mkdir()
        (box.docs / "Private" / "tax.txt").write_text("INCOME 2023")
        box.pair("desk", DOCS_RW)
        model.intents = [{"verb": "file.move", "resource": "share:docs/Private/tax.txt",
                          "params": {"to": "share:docs/Sorted/tax.txt"}}]  # fmt: skip
        model.values = {"year": 2023}
        task = run_task(box, "desk", from_content={"field": "year", "type": "integer"})
        assert model.contents == []  # the extractor saw nothing
        assert all("INCOME" not in c for c in model.contents)
        assert task["status"] == "failed"
        refused = [
            e["data"] for e in box.broker.audit.entries(0, 10_000) if e["kind"] == "plan.decided"
        ]
        assert any(d["status"] == "denied" for d in refused)  # the refused read, on record


def test_the_agents_own_words_never_reach_the_requester(box: Box, model: Compromised) -> None:
    box.pair("desk", DOCS_RW)
    model.fail = "here is the owner's secret: the owner's secret"
    task = run_task(box, "desk")
    assert task["status"] == "failed" and "secret" not in json.dumps(task)
    (failed,) = [
        e["data"] for e in box.broker.audit.entries(0, 10_000) if e["kind"] == "task.failed"
    ]
    assert "secret" not in json.dumps(failed) and failed["reason_sha256"]


def test_one_desktops_tasks_do_not_starve_anothers(box: Box, model: Compromised) -> None:
    greedy = box.pair("greedy", DOCS_RW)
    polite = box.pair("polite", DOCS_RW)
    model.fail = "no plan"
    model.gate = threading.Event()
    first = greedy.post("/v1/tasks", json={"text": "greedy one"}).json()
    wait_until(lambda: model.texts)  # the worker is busy with it
    greedy.post("/v1/tasks", json={"text": "greedy two"})
    r = greedy.post("/v1/tasks", json={"text": "greedy three"})
    assert r.status_code == 429 and r.json()["code"] == "task_quota"
    polite.post("/v1/tasks", json={"text": "polite one"})
    model.gate.set()
    wait_until(lambda: len(model.texts) == 3)
    assert model.texts == ["greedy one", "polite one", "greedy two"]
    assert greedy.get(f"/v1/tasks/{first['task_id']}").status_code == 200


def test_a_revoked_desktops_waiting_tasks_end(box: Box, model: Compromised) -> None:
    desk = box.pair("desk", DOCS_RW)
    box.pair("other", DOCS_RW)
    model.gate = threading.Event()
    model.intents = [{"verb": "file.mkdir", "resource": "share:docs/new"}]
    box.desks["other"].post("/v1/tasks", json={"text": "hold the worker"})
    wait_until(lambda: model.texts)
    task = desk.post("/v1/tasks", json={"text": "make a folder"}).json()
    box.broker.revoke_client(box.client_id("desk"))
    model.gate.set()
    row = wait_until(
        lambda: (r := box.broker.tasks.tasks.row(task["task_id"]))["status"] == "failed" and r
    )
    assert row["error"] == "the desktop was revoked"
    assert model.texts == ["hold the worker"]  # its words never reached the model
