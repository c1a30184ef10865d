"""The LAN API and the broker behind it, in process: the contract, and every
kind of bad input tried and refused with nothing left half-done."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from appliance.api.app import create_app
from appliance.box import open_box
from appliance.broker.executor import claims
from appliance.broker.service import Broker
from appliance.config import ApprovalSettings, Config, Limits
from appliance.errors import TokenError
from appliance.issuer.keys import DevKeyStore
from appliance.issuer.statement import make_statement, verify_statement
from appliance.issuer.tokens import Claims, TokenService


@pytest.fixture
def share(tmp_path: Path) -> Path:
    root = tmp_path / "share"
    (root / "Inbox").mkdir(parents=True)
    (root / "Inbox" / "a.pdf").write_bytes(b"%PDF a")
    (root / "Inbox" / "b.pdf").write_bytes(b"%PDF b")
    return root


def make_broker(tmp_path: Path, share: Path, **kw: object) -> Broker:
    approvals = kw.pop(
        "approvals", ApprovalSettings(timeout_s=30, arming_delay_s=0.0, queue_size=2)
    )
    config = Config(
        state_dir=tmp_path / "state",
        shares={"docs": share},
        dev=True,
        keystore="dev",
        approvals=approvals,
        **kw,
    )  # type: ignore[arg-type]
    return open_box(config)


@pytest.fixture
def broker(tmp_path: Path, share: Path) -> Iterator[Broker]:
    b = make_broker(tmp_path, share)
    yield b
    b.close()


# What the tests' desktops ask for: to read and change the share "docs".
READ_WRITE = {"shares": {"docs": "read-write"}}


def pair(
    http: TestClient, broker: Broker, name: str = "laptop", grant: dict | None = READ_WRITE
) -> str:
    r = http.post("/v1/pairings", json={"name": name, "grant": grant})
    assert r.status_code == 202, r.text
    pairing_id = r.json()["pairing_id"]
    assert broker.approvals.press("approve", source="test").accepted
    r = http.get(f"/v1/pairings/{pairing_id}")
    assert r.status_code == 200, r.text
    return r.json()["credential"]


@pytest.fixture
def http(broker: Broker) -> TestClient:
    client = TestClient(create_app(broker))
    client.headers["Authorization"] = "Bearer " + pair(client, broker)
    return client


def wait_done(http: TestClient, plan_id: str) -> dict:
    return http.get(f"/v1/plans/{plan_id}", params={"wait": 10}).json()


def audit_kinds(broker: Broker) -> list[str]:
    return [e["kind"] for e in broker.audit.entries(0, 10_000)]


# ------------------------------------------------------------------ the contract
def test_read_runs_at_once(http: TestClient) -> None:
    r = http.post(
        "/v1/intents",
        json={"intents": [{"verb": "file.read", "resource": "share:docs/Inbox/a.pdf"}]},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "done" and body["approval_id"] is None
    (intent,) = body["intents"]
    assert intent["decision"] == "allow" and intent["reasons"]
    assert intent["result"]["content"] == "%PDF a"
    assert http.get(f"/v1/actions/{intent['action_id']}").json()["status"] == "done"


def test_write_waits_for_approval_then_runs_and_undoes(
    http: TestClient, broker: Broker, share: Path
) -> None:
    r = http.post(
        "/v1/intents",
        json={
            "intents": [
                {
                    "verb": "file.move",
                    "resource": "share:docs/Inbox/a.pdf",
                    "params": {"to": "share:docs/a.pdf"},
                }
            ]
        },
    )
    assert r.status_code == 202
    plan = r.json()
    assert plan["status"] == "pending_approval" and plan["code"]
    assert (share / "Inbox" / "a.pdf").exists()
    approval = http.get(f"/v1/approvals/{plan['approval_id']}").json()
    assert approval["plan_id"] == plan["plan_id"] and approval["status"] == "pending"
    assert [a["approval_id"] for a in http.get("/v1/approvals").json()["approvals"]] == [
        plan["approval_id"]
    ]
    assert broker.approvals.press("approve", source="test").accepted
    plan = wait_done(http, plan["plan_id"])
    assert plan["status"] == "done", plan
    assert (share / "a.pdf").read_bytes() == b"%PDF a"
    assert not (share / "Inbox" / "a.pdf").exists()

    action_id = plan["intents"][0]["action_id"]
    r = http.post(f"/v1/actions/{action_id}/undo")
    assert r.status_code == 202, r.text
    assert broker.approvals.press("approve", source="test").accepted
    undo = wait_done(http, r.json()["plan_id"])
    assert undo["status"] == "done", undo
    assert (share / "Inbox" / "a.pdf").read_bytes() == b"%PDF a"
    assert not (share / "a.pdf").exists()
    # An undone action cannot be undone twice.
    r = http.post(f"/v1/actions/{action_id}/undo")
    assert r.status_code == 409 and r.json()["code"] == "already_undone"


def test_denied_press_runs_nothing(http: TestClient, broker: Broker, share: Path) -> None:
    r = http.post(
        "/v1/intents",
        json={"intents": [{"verb": "file.delete", "resource": "share:docs/Inbox/a.pdf"}]},
    )
    assert broker.approvals.press("deny", source="test").accepted
    plan = wait_done(http, r.json()["plan_id"])
    assert plan["status"] == "denied"
    assert (share / "Inbox" / "a.pdf").exists()
    assert plan["intents"][0]["status"] == "skipped"


def test_one_denied_intent_stops_the_whole_plan(http: TestClient, share: Path) -> None:
    r = http.post(
        "/v1/intents",
        json={
            "intents": [
                {"verb": "file.read", "resource": "share:docs/Inbox/a.pdf"},
                {"verb": "file.read", "resource": "share:docs/../../etc/passwd"},
            ]
        },
    )
    assert r.status_code == 403
    body = r.json()
    assert body["status"] == "denied"
    assert [i["decision"] for i in body["intents"]] == ["allow", "deny"]
    assert all(i["result"] is None for i in body["intents"])


def test_openapi_and_schema_served(http: TestClient) -> None:
    paths = http.get("/openapi.json").json()["paths"]
    for path in (
        "/v1/pairings",
        "/v1/intents",
        "/v1/plans/{plan_id}",
        "/v1/approvals/{approval_id}",
        "/v1/actions/{action_id}/undo",
        "/v1/audit",
        "/v1/audit/checkpoint",
        "/v1/keys",
        "/healthz",
    ):
        assert path in paths
    schema = http.get("/v1/intents/schema").json()
    assert "file.move" in str(schema)
    keys = http.get("/v1/keys").json()
    assert keys["unsafe"] is True and "BEGIN PUBLIC KEY" in keys["device_key"]["pem"]
    health = TestClient(http.app).get("/healthz").json()
    assert health["status"] == "ok" and health["unsafe_signer"] is True


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "malformed_json"),
        (b'{"intents": "nope"}', 422, "invalid_request"),
        (b'{"intents": []}', 422, "invalid_request"),
        (
            b'{"intents": [{"verb": "file.nuke", "resource": "share:docs/a"}]}',
            422,
            "invalid_request",
        ),
        (b'{"intents": [{"verb": "file.read", "resource": 5}]}', 422, "invalid_request"),
        (
            b'{"intents": [{"verb": "file.move", "resource": "share:docs/a"}]}',
            422,
            "invalid_request",
        ),
        (
            b'{"intents": [{"verb": "file.read", "resource": "share:docs/a", "params":'
            b' {"rm": true}}]}',
            422,
            "invalid_request",
        ),
        (
            b'{"intents": [{"verb": "file.read", "resource": "share:docs/a"}], "x": 1}',
            422,
            "invalid_request",
        ),
    ],
)
def test_malformed_bodies_refused_and_nothing_recorded(
    http: TestClient, broker: Broker, body: bytes, status: int, code: str
) -> None:
    before = broker.audit.size
    r = http.post("/v1/intents", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["code"] == code and r.json()["reason"]
    assert "Traceback" not in r.text
    assert broker.audit.size == before
    assert broker.db.one("SELECT COUNT(*) AS n FROM plans")["n"] == 0


def test_oversized_body_refused(tmp_path: Path, share: Path) -> None:
    broker = make_broker(tmp_path, share, limits=Limits(body_bytes=1000))
    try:
        http = TestClient(create_app(broker))
        http.headers["Authorization"] = "Bearer " + pair(http, broker)
        big = {
            "intents": [
                {
                    "verb": "file.write",
                    "resource": "share:docs/big.txt",
                    "params": {"content": "x" * 5000},
                }
            ]
        }
        r = http.post("/v1/intents", json=big)
        assert r.status_code == 413 and r.json()["code"] == "body_too_large"
        assert not (share / "big.txt").exists()
    finally:
        broker.close()


@pytest.mark.parametrize(
    "resource",
    [
        "share:docs/../outside.txt",
        "share:docs/Inbox/../../outside.txt",
        "/etc/passwd",
        "share:docs//etc/passwd",
        "share:docs/Inbox/a.pdf\x00.txt",
        "share:nosuch/a.pdf",
        "share:docs/" + "n" * 300,
        "share:docs/escape/secret.txt",
        "share:docs/fifo",
    ],
)
def test_path_tricks_denied_and_audited(
    http: TestClient, broker: Broker, share: Path, tmp_path: Path, resource: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "secret.txt").write_text("secret")
    if not (share / "escape").exists():
        (share / "escape").symlink_to(outside)
        os.mkfifo(share / "fifo")
    r = http.post(
        "/v1/intents",
        json={
            "intents": [
                {"verb": "file.move", "resource": resource, "params": {"to": "share:docs/x"}}
            ]
        },
    )
    assert r.status_code == 403, r.text
    (intent,) = r.json()["intents"]
    assert intent["decision"] == "deny" and intent["reasons"]
    assert (outside / "secret.txt").read_text() == "secret"
    assert not (share / "x").exists()
    decided = [e for e in broker.audit.entries(0, 1000) if e["kind"] == "plan.decided"]
    assert decided[-1]["data"]["status"] == "denied"
    assert decided[-1]["data"]["intents"][0]["reasons"] == intent["reasons"]


def test_move_target_outside_share_denied(http: TestClient, share: Path) -> None:
    r = http.post(
        "/v1/intents",
        json={
            "intents": [
                {
                    "verb": "file.move",
                    "resource": "share:docs/Inbox/a.pdf",
                    "params": {"to": "share:docs/../../tmp/a.pdf"},
                }
            ]
        },
    )
    assert r.status_code == 403
    assert (share / "Inbox" / "a.pdf").exists()


def test_content_derived_write_never_plainly_allowed(http: TestClient) -> None:
    r = http.post(
        "/v1/intents",
        json={
            "intents": [
                {
                    "verb": "file.move",
                    "resource": "share:docs/Inbox/a.pdf",
                    "params": {"to": "share:docs/a.pdf"},
                    "provenance": {"params.to": "content"},
                }
            ]
        },
    )
    assert r.status_code in (202, 403)
    assert r.json()["intents"][0]["decision"] != "allow"


# ------------------------------------------------------------------ credentials
def test_unpaired_forged_and_revoked_clients_refused(http: TestClient, broker: Broker) -> None:
    anon = TestClient(http.app)
    body = {"intents": [{"verb": "file.list", "resource": "share:docs/Inbox"}]}
    assert anon.post("/v1/intents", json=body).status_code == 401
    r = anon.post("/v1/intents", json=body, headers={"Authorization": "Bearer cl_x.forged"})
    assert r.status_code == 401 and r.json()["code"] == "unauthorized"
    good = http.headers["Authorization"]
    client_id = good.split()[1].split(".")[0]
    forged = f"Bearer {client_id}.{'A' * 43}"
    assert anon.get("/v1/audit", headers={"Authorization": forged}).status_code == 401
    broker.revoke_client(client_id)
    r = http.get("/v1/audit")
    assert r.status_code == 401 and r.json()["code"] == "revoked"


def test_credential_delivered_exactly_once(broker: Broker) -> None:
    http = TestClient(create_app(broker))
    r = http.post("/v1/pairings", json={"name": "desk"})
    pairing_id = r.json()["pairing_id"]
    assert http.get(f"/v1/pairings/{pairing_id}").json() == {
        "pairing_id": pairing_id,
        "status": "pending",
        "code": r.json()["code"],
    }
    broker.approvals.press("approve", source="test")
    credential = http.get(f"/v1/pairings/{pairing_id}").json()["credential"]
    again = http.get(f"/v1/pairings/{pairing_id}")
    assert again.status_code == 410 and "credential" not in again.json()
    assert again.json()["code"] == "already_delivered"
    # The box keeps only an HMAC: the secret is nowhere in its database.
    secret = credential.split(".", 1)[1]
    dump = "\n".join(broker.db._conn.iterdump())
    assert secret not in dump and credential.split(".")[0] in dump


def test_pairing_refused_when_denied(broker: Broker) -> None:
    http = TestClient(create_app(broker))
    pairing_id = http.post("/v1/pairings", json={"name": "intruder"}).json()["pairing_id"]
    broker.approvals.press("deny", source="test")
    r = http.get(f"/v1/pairings/{pairing_id}")
    assert r.json()["status"] == "denied" and "credential" not in r.json()


@pytest.mark.parametrize("name", ["", "   ", "x" * 65, "bad\nname", 5])
def test_pairing_name_checked(broker: Broker, name: object) -> None:
    r = TestClient(create_app(broker)).post("/v1/pairings", json={"name": name})
    assert r.status_code == 422


# ------------------------------------------------------------------ floods
def test_full_queue_answers_429_and_stores_nothing(
    http: TestClient, broker: Broker, share: Path
) -> None:
    move = {"intents": [{"verb": "file.delete", "resource": "share:docs/Inbox/a.pdf"}]}
    codes = [http.post("/v1/intents", json=move).status_code for _ in range(5)]
    # One shown, two waiting (queue_size=2), the rest refused.
    assert codes == [202, 202, 202, 429, 429]
    assert broker.db.one("SELECT COUNT(*) AS n FROM plans")["n"] == 3
    assert audit_kinds(broker).count("plan.refused") == 2


def test_rate_limit(tmp_path: Path, share: Path) -> None:
    broker = make_broker(tmp_path, share, limits=Limits(requests_per_second=1, burst=3))
    try:
        http = TestClient(create_app(broker))
        codes = [
            http.get("/v1/audit", headers={"Authorization": "Bearer cl_x.y"}).status_code
            for _ in range(5)
        ]
        assert codes[:3] == [401, 401, 401] and codes[3:] == [429, 429]
    finally:
        broker.close()


# ------------------------------------------------------------------ the executor's gate
def stored_action(broker: Broker, plan: dict) -> tuple[str, Claims]:
    """The first action of ``plan`` and the claims the executor expects; a plan
    waiting for approval gets a signed receipt as if it had been approved."""
    row = broker.plans.plan_row(plan["plan_id"])
    action = broker.plans.action(plan["intents"][0]["action_id"])
    assert row and action
    receipt = None
    if row.approval_id:
        request = broker.approvals.get(row.approval_id)
        approved = dataclasses.replace(request, status="approved", decided_by="test")
        receipt = broker.receipts.sign(approved)
    return action.action_id, claims(row, action, receipt)


def test_executor_refuses_replay_mismatch_and_forgery(
    http: TestClient, broker: Broker, share: Path, tmp_path: Path
) -> None:
    plan = http.post(
        "/v1/intents",
        json={"intents": [{"verb": "file.read", "resource": "share:docs/Inbox/a.pdf"}]},
    ).json()
    action, claims = stored_action(broker, plan)
    token = broker.tokens.mint(claims)
    broker.executor.execute(token, action)
    with pytest.raises(TokenError) as e:
        broker.executor.execute(token, action)
    assert e.value.code == "token_replayed"

    # A token for a read cannot be used for a delete of the same file.
    delete = http.post(
        "/v1/intents",
        json={"intents": [{"verb": "file.delete", "resource": "share:docs/Inbox/a.pdf"}]},
    ).json()
    del_action, del_claims = stored_action(broker, delete)
    read_token = broker.tokens.mint(claims)
    with pytest.raises(TokenError) as e:
        broker.executor.execute(read_token, del_action)
    assert e.value.code == "token_mismatch"
    # A token signed by another root key is a forgery.
    other = TokenService(DevKeyStore(tmp_path / "other-keys"), broker.db)
    with pytest.raises(TokenError) as e:
        broker.executor.execute(other.mint(del_claims), del_action)
    assert e.value.code == "token_forged"
    # An expired one is refused too.
    past = TokenService(broker.keystore, broker.db, ttl_s=1, clock=lambda: time.time() - 60)
    with pytest.raises(TokenError) as e:
        broker.executor.execute(past.mint(del_claims), del_action)
    assert e.value.code == "token_expired"
    assert (share / "Inbox" / "a.pdf").exists()


def test_revoke_all_refuses_earlier_tokens(http: TestClient, broker: Broker) -> None:
    plan = http.post(
        "/v1/intents",
        json={"intents": [{"verb": "file.stat", "resource": "share:docs/Inbox/a.pdf"}]},
    ).json()
    action, claims = stored_action(broker, plan)
    token = broker.tokens.mint(claims)
    old_statement = broker.statement
    epoch = broker.revoke_all_tokens()
    assert epoch == old_statement["epoch"] + 1 == broker.keystore.epoch()
    with pytest.raises(TokenError) as e:
        broker.executor.execute(token, action)
    assert e.value.code == "token_revoked"
    # The earlier boot statement is refused too; the new one is current.
    with pytest.raises(TokenError) as e:
        verify_statement(old_statement, broker.signer.public_key_pem(), current_epoch=epoch)
    assert e.value.code == "statement_revoked"
    assert (
        verify_statement(
            broker.statement, broker.signer.public_key_pem(), current_epoch=epoch
        ).epoch
        == epoch
    )
    # A fresh token under the new epoch runs.
    assert broker.executor.execute(broker.tokens.mint(claims), action)["type"] == "file"


def test_forged_or_resigned_statement_refused(http: TestClient, broker: Broker, tmp_path: Path):
    pem = broker.signer.public_key_pem()
    forged = dict(broker.statement, epoch=broker.statement["epoch"] + 5)
    with pytest.raises(TokenError) as e:
        verify_statement(forged, pem)
    assert e.value.code == "statement_forged"
    other = DevKeyStore(tmp_path / "other-keys")
    resigned = make_statement(
        other.device_signer(),
        bytes(other.token_root().public_key.to_bytes()),
        epoch=9,
        boot_count=1,
        signer_label="x",
    )
    with pytest.raises(TokenError) as e:
        verify_statement(resigned, pem)
    assert e.value.code == "statement_forged"
    # The executor refuses to act on a chain that does not hold.
    broker.chain.statement = forged
    plan = http.post(
        "/v1/intents",
        json={"intents": [{"verb": "file.stat", "resource": "share:docs/Inbox/a.pdf"}]},
    )
    assert plan.json()["status"] == "failed"
    assert plan.json()["intents"][0]["result"]["error"]["code"] == "statement_forged"


# ------------------------------------------------------------------ restart
def test_shutdown_expires_pending_plans(tmp_path: Path, share: Path) -> None:
    broker = make_broker(tmp_path, share)
    http = TestClient(create_app(broker))
    http.headers["Authorization"] = "Bearer " + pair(http, broker)
    plan = http.post(
        "/v1/intents",
        json={"intents": [{"verb": "file.delete", "resource": "share:docs/Inbox/a.pdf"}]},
    ).json()
    broker.close()
    broker = make_broker(tmp_path, share)
    try:
        assert broker.plans.public(plan["plan_id"])["status"] == "expired"
        assert (share / "Inbox" / "a.pdf").exists()
        decided = [
            e["data"] for e in broker.audit.entries(0, 1000) if e["kind"] == "approval.decided"
        ]
        assert decided[-1]["subject_id"] == plan["plan_id"]
        assert decided[-1]["status"] == "cancelled"
    finally:
        broker.close()


# ------------------------------------------------------------------ every endpoint
V1_CALLS = [
    ("POST", "/v1/intents"),
    ("GET", "/v1/intents/schema"),
    ("GET", "/v1/plans/plan_x"),
    ("POST", "/v1/plans/plan_x/undo"),
    ("GET", "/v1/approvals"),
    ("GET", "/v1/approvals/apr_x"),
    ("GET", "/v1/actions/act_x"),
    ("POST", "/v1/actions/act_x/undo"),
    ("GET", "/v1/audit"),
    ("GET", "/v1/audit/checkpoint"),
    ("GET", "/v1/keys"),
]


@pytest.mark.parametrize(("method", "path"), V1_CALLS)
def test_every_v1_call_needs_a_credential(http: TestClient, method: str, path: str) -> None:
    anon = TestClient(http.app)
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer cl_0.x"}):
        r = anon.request(method, path, headers=headers, json={"intents": []})
        assert r.status_code == 401, (path, headers, r.text)
        assert r.json()["code"] == "unauthorized"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/plans/plan_nope"),
        ("POST", "/v1/plans/plan_nope/undo"),
        ("GET", "/v1/approvals/apr_nope"),
        ("GET", "/v1/actions/act_nope"),
        ("POST", "/v1/actions/act_nope/undo"),
        ("GET", "/v1/nothing-here"),
    ],
)
def test_unknown_ids_are_404_with_a_reason(http: TestClient, method: str, path: str) -> None:
    r = http.request(method, path)
    assert r.status_code == 404 and r.json()["code"] == "not_found" and r.json()["reason"]


@pytest.mark.parametrize(
    "query",
    [
        "/v1/plans/plan_x?wait=abc",
        "/v1/plans/plan_x?wait=-1",
        "/v1/plans/plan_x?wait=1e9",
        "/v1/audit?start=-1",
        "/v1/audit?limit=0",
        "/v1/audit?limit=100000",
        "/v1/approvals/apr_x?wait=nan",
    ],
)
def test_bad_query_parameters(http: TestClient, query: str) -> None:
    r = http.get(query)
    assert r.status_code == 422 and r.json()["code"] == "invalid_request", r.text


@pytest.mark.parametrize("body", [b"{", b"[]", b'{"name": ["x"]}', b'{"name": "a", "x": 1}'])
def test_bad_pairing_bodies(broker: Broker, body: bytes) -> None:
    r = TestClient(create_app(broker)).post(
        "/v1/pairings", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code in (400, 422) and r.json()["reason"]
    assert broker.approvals.current() is None


def test_undo_of_a_read_is_refused(http: TestClient) -> None:
    plan = http.post(
        "/v1/intents",
        json={"intents": [{"verb": "file.stat", "resource": "share:docs/Inbox/a.pdf"}]},
    ).json()
    r = http.post(f"/v1/actions/{plan['intents'][0]['action_id']}/undo")
    assert r.status_code == 409 and r.json()["code"] == "not_undoable"


def test_one_requester_cannot_crowd_the_queue(tmp_path: Path, share: Path) -> None:
    broker = make_broker(
        tmp_path,
        share,
        approvals=ApprovalSettings(timeout_s=30, arming_delay_s=0, queue_size=8, per_requester=2),
    )
    try:
        app = create_app(broker)
        first, second = TestClient(app), TestClient(app)
        first.headers["Authorization"] = "Bearer " + pair(first, broker, "one")
        second.headers["Authorization"] = "Bearer " + pair(second, broker, "two")
        delete = {"intents": [{"verb": "file.delete", "resource": "share:docs/Inbox/a.pdf"}]}
        codes = [first.post("/v1/intents", json=delete).status_code for _ in range(3)]
        assert codes == [202, 202, 429]
        assert second.post("/v1/intents", json=delete).status_code == 202
    finally:
        broker.close()


def test_audit_failure_stops_everything(http: TestClient, broker: Broker, share: Path) -> None:
    broker.audit.close()
    r = http.post(
        "/v1/intents",
        json={
            "intents": [
                {
                    "verb": "file.move",
                    "resource": "share:docs/Inbox/a.pdf",
                    "params": {"to": "share:docs/a.pdf"},
                }
            ]
        },
    )
    assert r.status_code == 503 and r.json()["code"] == "unavailable"
    assert broker.approvals.current() is None
    assert broker.db.one("SELECT COUNT(*) AS n FROM plans")["n"] == 0
    health = http.get("/healthz")
    assert health.status_code == 503 and "audit log" in health.json()["problems"][0]
    assert (share / "Inbox" / "a.pdf").exists()


def test_pairing_goes_through_policy(tmp_path: Path, share: Path) -> None:
    import shutil

    policies = tmp_path / "policies"
    shutil.copytree(Path(__file__).resolve().parents[2] / "deploy" / "policies", policies)
    with (policies / "default.cedar").open("a") as f:
        f.write(
            '\n@id("no-new-desktops")\n@reason("This box takes no new desktops.")\n'
            '@risk("high")\nforbid (principal, action == Action::"client.pair", resource);\n'
        )
    broker = make_broker(tmp_path, share, policy_dir=policies)
    try:
        r = TestClient(create_app(broker)).post("/v1/pairings", json={"name": "desk"})
        assert r.status_code == 403 and "no new desktops" in r.json()["reason"]
        assert broker.approvals.current() is None
        assert broker.db.one("SELECT COUNT(*) AS n FROM pairing_requests")["n"] == 0
    finally:
        broker.close()


class _Kill(BaseException):
    """Stands in for SIGKILL: nothing in the broker catches it."""


@pytest.mark.parametrize("when", ["between link and unlink", "after unlink"])
def test_interrupted_move_is_settled_at_restart(
    tmp_path: Path, share: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    from appliance.broker.files import moving

    broker = make_broker(tmp_path, share)
    http = TestClient(create_app(broker))
    credential = pair(http, broker)
    http.headers["Authorization"] = "Bearer " + credential
    plan = http.post(
        "/v1/intents",
        json={
            "intents": [
                {
                    "verb": "file.move",
                    "resource": "share:docs/Inbox/a.pdf",
                    "params": {"to": "share:docs/a.pdf"},
                }
            ]
        },
    ).json()
    action, claims = stored_action(broker, plan)
    broker.plans.set_plan(plan["plan_id"], "running")

    def kill(*args: object, **kw: object) -> None:
        raise _Kill

    if when == "between link and unlink":
        monkeypatch.setattr(os, "unlink", kill)
    else:
        monkeypatch.setattr(moving, "settle", kill)
    with pytest.raises(_Kill):
        broker.executor.execute(broker.tokens.mint(claims), action)
    monkeypatch.undo()
    assert (share / "a.pdf").exists()
    broker.audit.close()
    broker.db.close()  # no orderly shutdown: as after a kill

    broker = make_broker(tmp_path, share)
    try:
        settled = broker.plans.public(plan["plan_id"])
        assert settled["status"] == "failed"
        (intent,) = settled["intents"]
        if when == "between link and unlink":
            # Back to exactly before: one name, at the source.
            assert intent["status"] == "interrupted" and not intent["undoable"]
            assert (share / "Inbox" / "a.pdf").read_bytes() == b"%PDF a"
            assert not (share / "a.pdf").exists()
        else:
            # It had taken effect: done, and undo puts the file back.
            assert intent["status"] == "done" and intent["undoable"]
            assert not (share / "Inbox" / "a.pdf").exists()
            http = TestClient(create_app(broker))
            # The same desktop, after the restart: only it may undo its actions.
            http.headers["Authorization"] = "Bearer " + credential
            undo = http.post(f"/v1/actions/{intent['action_id']}/undo").json()
            broker.approvals.press("approve", source="test")
            assert wait_done(http, undo["plan_id"])["status"] == "done"
            assert (share / "Inbox" / "a.pdf").read_bytes() == b"%PDF a"
        kinds = audit_kinds(broker)
        assert "action.interrupted" in kinds
    finally:
        broker.close()


@pytest.mark.parametrize(
    ("verb", "resource", "params", "kill_at"),
    [
        ("file.write", "share:docs/Inbox/new.txt", {"content": "hello"}, ("link",)),
        ("file.copy", "share:docs/Inbox/a.pdf", {"to": "share:docs/Inbox/c.pdf"}, ("link",)),
    ],
)
def test_crash_leftovers_are_swept_at_restart(
    tmp_path: Path,
    share: Path,
    monkeypatch: pytest.MonkeyPatch,
    verb: str,
    resource: str,
    params: dict,
    kill_at: tuple[str, ...],
) -> None:
    """A write or copy killed before its final link leaves a hidden temporary
    file. The next start removes exactly that (audited) and nothing a person
    put there, even under a look-alike name. (A delete is a rename into the
    trash and leaves nothing: tests/unit/test_crash_files.py.)"""
    from appliance.broker.files import base, fsutil

    (share / "Inbox" / ".appliance-tmp-notes").write_text("mine")  # not our form
    broker = make_broker(tmp_path, share)
    http = TestClient(create_app(broker))
    http.headers["Authorization"] = "Bearer " + pair(http, broker)
    intent = {"verb": verb, "resource": resource, "params": params}
    plan = http.post("/v1/intents", json={"intents": [intent]}).json()
    action, claims = stored_action(broker, plan)
    broker.plans.set_plan(plan["plan_id"], "running")

    def kill(*args: object, **kw: object) -> None:
        raise _Kill

    for call in kill_at:  # from the first of these calls on, the process is dead
        monkeypatch.setattr(os, call, kill)
    monkeypatch.setattr(base, "unlink_quietly", kill)
    with pytest.raises(_Kill):
        broker.executor.execute(broker.tokens.mint(claims), action)
    monkeypatch.undo()
    where = share / "Inbox"
    hidden = [p.name for p in where.iterdir() if fsutil.LEFTOVER_RE.match(p.name)]
    assert len(hidden) == 1
    broker.audit.close()
    broker.db.close()  # no orderly shutdown: as after a kill

    broker = make_broker(tmp_path, share)
    try:
        assert not [p for p in where.iterdir() if fsutil.LEFTOVER_RE.match(p.name)]
        (entry,) = [e for e in broker.audit.entries(0, 10_000) if e["kind"] == "action.interrupted"]
        assert entry["data"]["leftovers_removed"] == ["share:docs/Inbox/" + hidden[0]]
        (done,) = broker.plans.public(plan["plan_id"])["intents"]
        assert done["status"] == "interrupted"
        assert sorted(p.name for p in (share / "Inbox").iterdir()) == [
            ".appliance-tmp-notes",
            "a.pdf",
            "b.pdf",
        ]
        assert (share / "Inbox" / ".appliance-tmp-notes").read_text() == "mine"
    finally:
        broker.close()


def test_statement_for_another_root_is_refused(http: TestClient, broker: Broker, tmp_path: Path):
    """Even a statement the device key really signed must name the token root
    the executor verifies with; otherwise the chain is broken and nothing runs."""
    other_root = DevKeyStore(tmp_path / "other-keys").token_root().public_key
    broker.chain.statement = make_statement(
        broker.signer,
        bytes(other_root.to_bytes()),
        epoch=broker.tokens.epoch(),
        boot_count=broker.keystore.boot_count,
        signer_label=broker.keystore.label,
    )
    r = http.post(
        "/v1/intents",
        json={"intents": [{"verb": "file.stat", "resource": "share:docs/Inbox/a.pdf"}]},
    )
    assert r.json()["status"] == "failed"
    assert r.json()["intents"][0]["result"]["error"]["code"] == "statement_mismatch"
