"""A compromised model agent answers what no desktop can be shown: a lone
surrogate in its error or its model's name, NaN in its timings. The task
fails (the desktop is told the fixed message, the box's log the reason),
and reading the task is never a 500."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from appliance.broker.service import Broker
from appliance.broker.taskrunner import AGENT_MESSAGES
from tests.agent.test_agent_socket import FakePeer

INTENTS = b'"intents": [{"verb": "file.list", "resource": "share:docs/Inbox"}]'
SHA = b'"' + b"a" * 64 + b'"'


def planned(extra: bytes) -> bytes:
    return b'{"ok": true, "result": {' + INTENTS + b', "model_sha256": ' + SHA + extra + b"}}\n"


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (
            b'{"ok": false, "error": {"code": "model_error", "reason": "boom \\udcae"}}\n',
            "not valid Unicode",
        ),
        (planned(b', "model_id": "m\\udcae"'), "not valid Unicode"),
        (planned(b', "model_id": "m", "seconds": NaN, "tokens": Infinity'), "not JSON"),
    ],
    ids=["error-reason", "model-name", "nan-timings"],
)
def test_what_the_agent_says_cannot_break_the_answer(
    http: TestClient,
    broker: Broker,
    answer: bytes,
    why: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    peer = FakePeer(broker.config.agent_socket_path, answer)
    try:
        r = http.post("/v1/tasks", json={"text": "list the inbox"})
        assert r.status_code == 202, r.text
        task_id = r.json()["task_id"]
        deadline = time.monotonic() + 20
        while True:
            r = http.get(f"/v1/tasks/{task_id}", params={"wait": 5})
            assert r.status_code == 200, r.text
            if r.json()["status"] in ("failed", "done", "denied", "expired"):
                break
            assert time.monotonic() < deadline
        task = r.json()
        assert task["status"] == "failed"
        assert task["error"] == AGENT_MESSAGES["agent_failed"]
        assert any(
            "the model agent answered" in r.getMessage() and why in r.getMessage()
            for r in caplog.records
        )
        events = http.get(f"/v1/tasks/{task_id}/events")
        assert events.status_code == 200 and "event: failed" in events.text
    finally:
        peer.close()
