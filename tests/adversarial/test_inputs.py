"""Bad input, as a malicious desktop, an unpaired device or a hostile plugin
sends it: each gets a clear refusal (never a 500), and nothing changes on
disk or in the audit log. Each case here was a 500 (or a crash that left a
plugin run unaudited) before the edge checked it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from appliance.broker.scope import Target
from appliance.broker.service import Broker
from appliance.errors import ApplianceError, ExecutionError
from tests.adversarial.conftest import Witness

LONE = "\\udcae"  # as JSON spells it: half of a UTF-16 pair, no character


def post_raw(http: TestClient, path: str, body: str | bytes) -> tuple[int, dict]:
    r = http.post(path, content=body, headers={"content-type": "application/json"})
    return r.status_code, r.json()


def intents(*items: str) -> str:
    return '{"intents": [' + ",".join(items) + "]}"


def refused_as_not_unicode(status: int, body: dict, where: str) -> None:
    assert status == 400, body
    assert body["code"] == "invalid_unicode"
    assert f"{where} holds a lone surrogate U+DCAE" in body["reason"], body["reason"]


# ------------------------------------------------------------------ lone surrogates
@pytest.mark.parametrize(
    ("intent", "where"),
    [
        (
            '{"verb": "file.write", "resource": "share:docs/new.txt",'
            f' "params": {{"content": "x{LONE}"}}}}',
            "intents.0.params.content",
        ),
        (
            '{"verb": "file.copy", "resource": "share:docs/Inbox/a.pdf",'
            f' "params": {{"to": "share:docs/{LONE}.pdf"}}}}',
            "intents.0.params.to",
        ),
        (
            '{"verb": "file.rename", "resource": "share:docs/Inbox/a.pdf",'
            f' "params": {{"name": "{LONE}"}}}}',
            "intents.0.params.name",
        ),
        (f'{{"verb": "file.read", "resource": "share:docs/{LONE}"}}', "intents.0.resource"),
    ],
    ids=["write-content", "copy-to", "rename-name", "read-resource"],
)
def test_a_lone_surrogate_in_an_intent_is_refused(
    http: TestClient, witness: Witness, intent: str, where: str
) -> None:
    status, body = post_raw(http, "/v1/intents", intents(intent))
    refused_as_not_unicode(status, body, where)
    witness.unchanged()


def test_a_lone_surrogate_as_raw_bytes_is_refused(http: TestClient, witness: Witness) -> None:
    # Not the JSON escape but the three bytes a careless encoder writes for
    # U+DCAE; Python's JSON reader turns them into the same lone surrogate.
    body = (
        b'{"intents": [{"verb": "file.write", "resource": "share:docs/new.txt",'
        b' "params": {"content": "\xed\xb2\xae"}}]}'
    )
    status, answer = post_raw(http, "/v1/intents", body)
    refused_as_not_unicode(status, answer, "intents.0.params.content")
    witness.unchanged()


def test_a_lone_surrogate_in_a_field_name_is_refused(http: TestClient, witness: Witness) -> None:
    status, body = post_raw(
        http,
        "/v1/intents",
        intents(
            f'{{"verb": "file.list", "resource": "share:docs/", "provenance": {{"{LONE}": 1}}}}'
        ),
    )
    assert status == 400 and body["code"] == "invalid_unicode"
    assert "a field name in intents.0.provenance" in body["reason"]
    witness.unchanged()


def test_a_lone_surrogate_in_task_text_is_refused(
    http: TestClient, broker: Broker, witness: Witness
) -> None:
    status, body = post_raw(http, "/v1/tasks", f'{{"text": "sort {LONE} the inbox"}}')
    refused_as_not_unicode(status, body, "text")
    witness.unchanged()  # no task.received: no task was made
    assert broker.tasks.tasks.db.all("SELECT task_id FROM tasks") == []


def test_a_lone_surrogate_in_plugin_input_is_refused(
    http: TestClient, install_hostile, witness: Witness
) -> None:
    install_hostile()
    status, body = post_raw(
        http, "/v1/plugins/hostile/run", f'{{"verb": "read", "input": ["{LONE}"]}}'
    )
    refused_as_not_unicode(status, body, "input.0")
    witness.unchanged()  # no plugin.started: the plugin never ran


def test_a_lone_surrogate_in_an_unpaired_pairing_name_is_refused(
    anonymous: TestClient, broker: Broker, witness: Witness
) -> None:
    status, body = post_raw(anonymous, "/v1/pairings", f'{{"name": "lap{LONE}top"}}')
    refused_as_not_unicode(status, body, "name")
    witness.unchanged()
    assert broker.approvals.public_list() == []


# ------------------------------------------------------------------ names shown to the owner
@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("laptop\x85", "a control character: U+0085"),  # C1 (NEXT LINE)
        ("evil\u202egnp.exe", "a bidirectional control: U+202E"),
        ("lap\u200btop", "a zero-width character: U+200B"),
        ("\ufefflaptop", "a zero-width character: U+FEFF"),
        ("lap\ue000top", "an invisible or private-use character: U+E000"),
        ("two\u2028lines", "an invisible or private-use character: U+2028"),
        ("   ", "at least one visible character"),
        ("x" * 65, "at most 64 characters"),
    ],
)
def test_a_pairing_name_a_person_cannot_read_as_it_is_is_refused(
    anonymous: TestClient, broker: Broker, witness: Witness, name: str, kind: str
) -> None:
    r = anonymous.post("/v1/pairings", json={"name": name})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["code"] == "invalid_request" and body["reason"].startswith("name: ")
    assert kind in body["reason"], body["reason"]
    witness.unchanged()
    assert broker.approvals.public_list() == []


def test_a_look_alike_pairing_name_is_flagged_on_the_panel(
    anonymous: TestClient, broker: Broker
) -> None:
    r = anonymous.post("/v1/pairings", json={"name": "p\u0430ypal"})  # Cyrillic а
    assert r.status_code == 202, r.text
    (shown,) = broker.approvals.public_list()
    assert "'p\u0430ypal' [mixed scripts: Cyrillic+Latin]" in shown["summary"]


def test_the_broker_refuses_a_hidden_name_even_past_the_api(broker: Broker) -> None:
    with pytest.raises(ApplianceError) as info:
        broker.pairing.request("lap\u202etop", "192.168.1.9")
    assert info.value.status == 422 and "bidirectional control" in info.value.reason


# ------------------------------------------------------------------ numbers and nonces
@pytest.mark.parametrize("offset", [2**63, 2**63 - 1, 2**53, -1])
def test_a_read_offset_past_any_file_is_refused(
    http: TestClient, witness: Witness, offset: int
) -> None:
    r = http.post(
        "/v1/intents",
        json={
            "intents": [
                {
                    "verb": "file.read",
                    "resource": "share:docs/Inbox/a.pdf",
                    "params": {"offset": offset},
                }
            ]
        },
    )
    assert r.status_code == 422, r.text
    assert "params.offset must be between 0 and 9007199254740991" in r.json()["reason"]
    witness.unchanged()


def test_the_reader_itself_refuses_an_offset_past_any_file(broker: Broker) -> None:
    # Below the API too: the executor's read gets the same bound, not an OverflowError.
    target = Target("docs", ("Inbox", "a.pdf"))
    with pytest.raises(
        ExecutionError,
        match="params.offset must be a non-negative integer, at most 9007199254740991",
    ):
        broker.files.execute("file.read", target, {"offset": 2**63})
    assert broker.files.execute("file.read", target, {"offset": 2}).result["content"] == "DF a"


def test_an_integral_json_number_is_an_integer(http: TestClient) -> None:
    # JSON has one number type: 2.0 is the integer 2 (and 2.5 is not).
    def read(offset: float) -> tuple[int, dict]:
        return post_raw(
            http,
            "/v1/intents",
            intents(
                '{"verb": "file.read", "resource": "share:docs/Inbox/a.pdf",'
                f' "params": {{"offset": {offset}}}}}'
            ),
        )

    status, body = read(2.0)
    assert status == 200 and body["intents"][0]["result"]["content"] == "DF a"
    status, body = read(2.5)
    assert status == 422 and "params.offset of file.read must be int" in body["reason"]


@pytest.mark.parametrize("nonce", ["a" * 17, "0" * 129, "zz" * 8, "ab" * 7])
def test_a_malformed_attestation_nonce_is_refused(
    http: TestClient, witness: Witness, nonce: str
) -> None:
    r = http.get("/v1/attestation", params={"nonce": nonce})
    assert r.status_code == 422, r.text
    assert r.json()["reason"].startswith("query.nonce: String should match pattern")
    witness.unchanged()


def test_a_whole_byte_nonce_reaches_the_broker(http: TestClient) -> None:
    # This box has no TPM (development key): the broker answers, with its reason.
    r = http.get("/v1/attestation", params={"nonce": "ab" * 8})
    assert r.status_code == 501 and r.json()["code"] == "no_tpm"


# ------------------------------------------------------------------ bodies
@pytest.mark.parametrize(
    "body",
    [b"\xff\xfe{", b"[" * 100_000 + b"]" * 100_000, b'{"intents": [}'],
    ids=["not-utf8", "nested-too-deep", "not-json"],
)
def test_an_unreadable_body_is_a_400(http: TestClient, witness: Witness, body: bytes) -> None:
    status, answer = post_raw(http, "/v1/intents", body)
    assert status == 400 and answer["code"] in ("malformed_json", "malformed_body"), answer
    witness.unchanged()


# ------------------------------------------------------------------ plugins' web requests
def test_a_plugin_url_with_a_control_character_is_refused_and_the_run_audited(
    http: TestClient, broker: Broker, install_hostile, witness: Witness
) -> None:
    install_hostile(("http://127.0.0.1:9",))
    witness.log_size = broker.audit.size  # the install is not the attack
    r = http.post(
        "/v1/plugins/hostile/run", json={"verb": "fetch", "input": "http://127.0.0.1:9/a\x01b"}
    )
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["code"] == "out_of_scope"
    assert "not a plain http(s) URL: it holds U+0001 at 20" in body["reason"]
    kinds = [e["kind"] for e in witness.new_entries()]
    # Started, refused, and its end in the log; no request was made.
    assert kinds == ["plugin.started", "plugin.call_refused", "plugin.stopped"], kinds
    assert witness.tree() == witness.files


def test_a_url_the_http_client_refuses_ends_the_call_not_the_run(
    broker: Broker, install_hostile, witness: Witness
) -> None:
    # httpx.InvalidURL (here: a URL over 64 KiB) is not an httpx.HTTPError;
    # the plugin gets a refusal it can read, and the run ends as it should.
    # (An address not the box's own, from TEST-NET-1: nothing is sent there.)
    install_hostile(("http://192.0.2.1:9",))
    witness.log_size = broker.audit.size
    out = broker.run_plugin("laptop", "hostile", "fetch", "http://192.0.2.1:9/" + "a" * 70_000)
    assert out["output"] is None
    kinds = [e["kind"] for e in witness.new_entries()]
    assert kinds == ["plugin.started", "plugin.finished"], kinds


@pytest.mark.parametrize("verb", ["url", "body", "write"])
def test_a_plugin_host_call_with_a_lone_surrogate_stops_the_run(
    http: TestClient, broker: Broker, install_unicode, witness: Witness, verb: str
) -> None:
    install_unicode()
    witness.log_size = broker.audit.size
    r = http.post("/v1/plugins/unicode/run", json={"verb": verb})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["code"] == "plugin_bad_call"
    assert "a host call must be proper Unicode" in body["reason"], body["reason"]
    kinds = [e["kind"] for e in witness.new_entries()]
    assert kinds == ["plugin.started", "plugin.stopped"], kinds
    assert witness.tree() == witness.files
    assert broker.plans.db.all("SELECT plan_id FROM plans") == []


@pytest.mark.parametrize(
    ("verb", "text"), [("output", '{"said": "\\udcae"}'), ("nan", '{"value": NaN}')]
)
def test_plugin_output_json_cannot_carry_is_handed_back_as_text(
    http: TestClient, install_unicode, verb: str, text: str
) -> None:
    install_unicode()
    r = http.post("/v1/plugins/unicode/run", json={"verb": verb})
    assert r.status_code == 200, r.text
    assert r.json()["output"] == text


# ------------------------------------------------------------------ methods
@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("TRACE", "/v1/intents", "POST"),
        ("TRACE", "/healthz", "GET"),
        ("DELETE", "/v1/plans/plan_x", "GET"),
        ("FROB", "/v1/audit", "GET"),
        ("PUT", "/v1/pairings", "POST"),
    ],
)
def test_an_unknown_method_is_a_405_with_allow(
    http: TestClient, witness: Witness, method: str, path: str, allowed: str
) -> None:
    r = http.request(method, path)
    assert r.status_code == 405 and r.headers["allow"] == allowed
    assert r.json() == {
        "code": "method_not_allowed",
        "reason": f"{method} is not allowed here; this path answers {allowed}",
    }
    witness.unchanged()


# ------------------------------------------------------------------ the 401 stays the box's own
@pytest.mark.parametrize("header", [None, "Basic bGFwdG9wOng=", "Bearer ", "Bearer cl_x.nope"])
def test_no_or_a_bad_credential_is_the_boxs_own_401(
    anonymous: TestClient, witness: Witness, header: str | None
) -> None:
    headers = {"Authorization": header} if header is not None else {}
    r = anonymous.get("/v1/approvals", headers=headers)
    assert r.status_code == 401
    body = r.json()
    assert body["code"] == "unauthorized" and "pair" in body["reason"]
    witness.unchanged()


# ------------------------------------------------------------------ the document
def test_the_document_declares_every_answer_and_the_credential(http: TestClient) -> None:
    doc = http.get("/openapi.json").json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes == {
        "credential": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "<client_id>.<secret>",
            "description": schemes["credential"]["description"],
        }
    }
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            statuses = set(op["responses"])
            open_route = path in ("/healthz", "/v1/pairings", "/v1/pairings/{pairing_id}")
            if not open_route:
                assert op["security"] == [{"credential": []}], (method, path)
                assert {"401", "429"} <= statuses, (method, path)
            if "requestBody" in op:
                assert {"400", "413", "422"} <= statuses, (method, path)
            if "{" in path:
                assert "404" in statuses, (method, path)
            for status, answer in op["responses"].items():
                if status.startswith("4") and status != "403":
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (path, status)
    assert "HTTPValidationError" not in doc["components"]["schemas"]


def test_the_intent_schema_states_each_verbs_parameters(http: TestClient) -> None:
    from appliance.intents import plan_schema
    from appliance.verbs import INTENT_VERBS, REGISTRY

    served = http.get("/v1/intents/schema").json()
    published = json.loads((Path(__file__).parents[2] / "docs/plan.schema.json").read_text())
    assert served == published == plan_schema()
    rules = {
        r["if"]["properties"]["verb"]["const"]: r["then"]
        for r in served["$defs"]["Intent"]["allOf"]
    }
    assert sorted(rules) == sorted(INTENT_VERBS)
    for verb, then in rules.items():
        spec = REGISTRY[verb].params
        params = then["properties"]["params"]
        assert params["additionalProperties"] is False
        assert set(params["properties"]) == set(spec)
        assert params.get("required", []) == [n for n, p in spec.items() if p.required]
    assert rules["file.write"]["properties"]["params"]["properties"]["encoding"]["enum"] == [
        "utf-8",
        "base64",
    ]
