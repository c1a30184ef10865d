"""appliance.client, the public library: typed results, sync and async,
pinned TLS, retries on 429/503, waiting on plans and approvals, and the
contract version negotiated from /healthz."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.api.tls import ensure_certificate
from appliance.client import (
    ApplianceClient,
    AsyncApplianceClient,
    ClientError,
    Credentials,
    Incompatible,
    NotPaired,
    NotTheBox,
    Plan,
    Retry,
    Unreachable,
)
from tests.client.conftest import Served, free_port

MKDIR = [{"verb": "file.mkdir", "resource": "share:docs/2024"}]
READ = [{"verb": "file.read", "resource": "share:docs/Inbox/a.txt"}]
FAST = Retry(attempts=4, base_s=0.001, cap_s=0.01)


def test_sync_typed_results_and_waiting(served: Served) -> None:
    with ApplianceClient(served.url, served.credential()) as box:
        health = box.health()
        assert health.ok and 1 in health.api_versions and box.api_version is None
        read = box.submit(READ)
        assert box.api_version == 1  # negotiated at the first call that needs it
        assert isinstance(read, Plan) and read.status == "done" and read.finished
        (action,) = read.actions
        assert action.verb == "file.read" and action.result and action.result["content"] == "alpha"
        assert read.raw["intents"][0]["action_id"] == action.action_id

        plan = box.submit(MKDIR)
        assert plan.waiting_for_press and plan.code and plan.code in plan.press_sentence()
        approval = box.approval(str(plan.approval_id))
        assert approval.status == "pending" and approval.code == plan.code
        seen: list[str] = []
        pressing = threading.Thread(target=served.press)
        pressing.start()
        done = box.wait_plan(plan.plan_id, timeout=20, on_update=lambda p: seen.append(p.status))
        pressing.join()
        assert done.status == "done" and (served.share / "2024").is_dir() and seen[-1] == "done"
        assert box.wait_approval(str(plan.approval_id), timeout=5).status == "approved"

        undo = box.undo_plan(plan.plan_id)
        assert undo.kind == "undo" and undo.waiting_for_press
        served.press()
        assert box.wait_plan(undo.plan_id, timeout=20).status == "done"
        assert not (served.share / "2024").exists()

        denied = box.submit([{"verb": "file.read", "resource": "share:docs/../x"}])
        assert denied.status == "denied" and any("'..'" in r for r in denied.reasons)
        assert [s.name for s in box.shares()] == ["docs"]
        recent = box.recent(3)
        assert len(recent.entries) == 3 and recent.start + 3 == recent.size


def test_async_typed_results_and_waiting(served: Served) -> None:
    credential = served.credential()

    async def run() -> None:
        async with AsyncApplianceClient(served.url, credential) as box:
            read = await box.submit(READ)
            assert read.actions[0].result and read.actions[0].result["content"] == "alpha"
            plan = await box.submit(MKDIR)
            assert plan.waiting_for_press
            pressing = asyncio.create_task(asyncio.to_thread(served.press))
            done = await box.wait_plan(plan.plan_id, timeout=20)
            await pressing
            assert done.status == "done" and (served.share / "2024").is_dir()
            with pytest.raises(ClientError) as refused:
                await box.plan("plan_nope")
            assert refused.value.status == 404 and refused.value.code == "not_found"

    asyncio.run(run())


# ---------------------------------------------------------------------- retries
def scripted(answers: list[tuple[int, dict[str, Any]]], seen: list[str], **headers: str):
    """A transport that answers /healthz, then the scripted answers in turn."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path == "/healthz":
            return httpx.Response(200, json={"status": "ok", "api_versions": [1]})
        status, body = answers.pop(0)
        return httpx.Response(status, json=body, headers=headers)

    return handle


def test_429_and_503_are_retried_with_backoff() -> None:
    seen: list[str] = []
    answers = [
        (429, {"code": "rate_limited", "reason": "slow down"}),
        (503, {"code": "unavailable", "reason": "the TPM is busy"}),
        (200, {"plan_id": "plan_1", "status": "done", "intents": []}),
    ]
    box = ApplianceClient(
        "http://box", "c.s", retry=FAST, transport=httpx.MockTransport(scripted(answers, seen))
    )
    assert box.submit(MKDIR).plan_id == "plan_1"
    assert seen == ["/healthz", "/v1/intents", "/v1/intents", "/v1/intents"]


def test_retries_end_with_the_boxs_reason() -> None:
    seen: list[str] = []
    answers = [(503, {"code": "unavailable", "reason": "the TPM is gone"})] * 10
    box = ApplianceClient(
        "http://box", "c.s", retry=FAST, transport=httpx.MockTransport(scripted(answers, seen))
    )
    with pytest.raises(ClientError) as refused:
        box.plan("plan_1")
    assert refused.value.status == 503 and refused.value.reason == "the TPM is gone"
    assert seen.count("/v1/plans/plan_1") == FAST.attempts


def test_a_lockout_is_not_retried() -> None:
    seen: list[str] = []
    answers = [(429, {"code": "locked_out", "reason": "denied three times"})] * 3
    box = ApplianceClient(
        "http://box", "c.s", retry=FAST, transport=httpx.MockTransport(scripted(answers, seen))
    )
    with pytest.raises(ClientError, match="denied three times"):
        box.submit(MKDIR)
    assert seen.count("/v1/intents") == 1


def test_backoff_grows_to_its_cap_and_honours_retry_after() -> None:
    retry = Retry(attempts=5, base_s=0.5, cap_s=4.0)
    assert [retry.delay(n, None) for n in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert retry.delay(0, 3.0) == 3.0 and retry.delay(0, 9999) == 60.0


def test_async_retries_too() -> None:
    seen: list[str] = []
    answers = [(429, {"code": "approval_queue_full", "reason": "full"}), (200, {"shares": []})]
    transport = httpx.MockTransport(scripted(answers, seen))

    async def run() -> list[Any]:
        async with AsyncApplianceClient(
            "http://box", "c.s", retry=FAST, transport=transport
        ) as box:
            return await box.shares()

    assert asyncio.run(run()) == [] and seen.count("/v1/shares") == 2


def test_a_denied_plan_is_a_value_not_an_error() -> None:
    action = {"action_id": "a", "status": "refused", "decision": "deny", "reasons": ["outside"]}
    denied = {"plan_id": "plan_9", "status": "denied", "intents": [action]}
    box = ApplianceClient(
        "http://box", "c.s", transport=httpx.MockTransport(scripted([(403, denied)], []))
    )
    plan = box.submit(MKDIR)
    assert plan.status == "denied" and plan.reasons == ["outside"]


def test_a_malformed_answer_is_refused_with_a_reason() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/healthz":
            return httpx.Response(200, json={"status": "ok"})
        return httpx.Response(200, text="<html>not the box</html>")

    box = ApplianceClient("http://box", "c.s", transport=httpx.MockTransport(handle))
    with pytest.raises(ClientError) as refused:
        box.plan("plan_1")
    assert refused.value.code == "bad_response"


# ---------------------------------------------------------------------- the contract
def test_a_box_with_no_common_contract_version_is_refused() -> None:
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json={"status": "ok", "api_versions": [7, 8]})

    box = ApplianceClient("http://box", "c.s", transport=httpx.MockTransport(handle))
    with pytest.raises(Incompatible, match="update the client"):
        box.shares()
    assert seen == ["/healthz"]  # nothing else was asked of it


def test_versions_are_negotiated_once_and_an_older_box_speaks_1() -> None:
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path == "/healthz":  # a box from before api_versions
            return httpx.Response(503, json={"status": "unavailable", "problems": ["no TPM"]})
        return httpx.Response(200, json={"shares": [{"name": "docs"}]})

    box = ApplianceClient("http://box", "c.s", transport=httpx.MockTransport(handle))
    assert box.shares()[0].resource == "share:docs" and box.shares()
    assert box.api_version == 1 and seen.count("/healthz") == 1


# ---------------------------------------------------------------------- pinned TLS
def test_pinned_tls_trusts_exactly_the_pinned_certificate(
    served_tls: Served, tmp_path: Path
) -> None:
    url, fp = served_tls.url, served_tls.fingerprint
    credential = served_tls.credential()
    box = ApplianceClient(url, credential, fingerprint=fp)
    assert box.shares()[0].name == "docs" and box.certificate_pem
    with pytest.raises(NotTheBox, match="does not match"):
        ApplianceClient(url, credential, fingerprint="AB:" * 31 + "AB")
    with pytest.raises(NotTheBox, match="fingerprint"):
        ApplianceClient(url, credential)  # https without a pin: refused, not trusted

    # A desktop that kept another certificate (the box was swapped, or its
    # certificate changed) is refused at the connection, with that reason.
    other_cert, _, other_fp = ensure_certificate(tmp_path / "other", ["127.0.0.1"])
    kept = other_cert.read_text()
    with pytest.raises(NotTheBox, match="another certificate"):
        ApplianceClient(url, credential, fingerprint=other_fp, certificate_pem=kept).shares()

    async def run() -> None:
        box = AsyncApplianceClient(url, credential, fingerprint=other_fp, certificate_pem=kept)
        with pytest.raises(NotTheBox):
            await box.shares()
        good = AsyncApplianceClient(url, credential, fingerprint=fp)
        assert [s.name for s in await good.shares()] == ["docs"]
        await good.aclose()

    asyncio.run(run())


def test_credentials_are_kept_private_and_missing_ones_say_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "client.json"
    Credentials("https://box:8443", "cl_1.s", "AA:BB", "PEM", {"epoch": 3}, "box").save(path)
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    loaded = Credentials.load(path)
    assert loaded.pins == {"epoch": 3} and loaded.certificate_pem == "PEM"
    assert json.loads(path.read_text())["credential"] == "cl_1.s"
    with pytest.raises(NotPaired, match="appliance pair"):
        Credentials.load(tmp_path / "none.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(NotPaired, match="cannot be read"):
        Credentials.load(tmp_path / "broken.json")


def test_an_unreachable_box_is_said_so() -> None:
    box = ApplianceClient(f"http://127.0.0.1:{free_port()}", "c.s", timeout=2)
    with pytest.raises(Unreachable, match="cannot reach the box"):
        box.health()
    with pytest.raises(Unreachable):
        ApplianceClient(f"https://127.0.0.1:{free_port()}", fingerprint="AA")
