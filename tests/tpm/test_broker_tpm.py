"""The broker on the TPM key store: the chain from the TPM device key to the
tokens, and failing closed when the TPM goes away mid-run."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from appliance.api.app import create_app
from appliance.box import open_box
from appliance.broker.service import Broker
from appliance.config import ApprovalSettings, Config
from appliance.errors import TokenError
from appliance.issuer.statement import verify_statement
from appliance.issuer.swtpm import Swtpm
from tests.pairing import credential
from tests.tpm.conftest import restart


def make(tmp_path: Path, tcti: str) -> tuple[Broker, TestClient, Path]:
    share = tmp_path / "share"
    (share / "Inbox").mkdir(parents=True, exist_ok=True)
    (share / "Inbox" / "a.pdf").write_bytes(b"%PDF a")
    config = Config(
        state_dir=tmp_path / "state",
        shares={"docs": share},
        dev=True,
        keystore="tpm",
        tpm_tcti=tcti,
        approvals=ApprovalSettings(timeout_s=30, arming_delay_s=0),
    )
    broker = open_box(config)
    http = TestClient(create_app(broker))
    http.headers["Authorization"] = "Bearer " + credential(broker, "desk")
    return broker, http, share


MOVE = {
    "intents": [
        {
            "verb": "file.move",
            "resource": "share:docs/Inbox/a.pdf",
            "params": {"to": "share:docs/a.pdf"},
        }
    ]
}


def test_the_chain_starts_in_the_tpm(tmp_path: Path, simulator: Swtpm) -> None:
    broker, http, _ = make(tmp_path, simulator.tcti)
    try:
        keys = http.get("/v1/keys").json()
        assert keys["unsafe"] is False and keys["signer"] == "tpm"
        pem = keys["device_key"]["pem"].encode()
        verified = verify_statement(keys["statement"], pem, current_epoch=keys["epoch"])
        assert verified.epoch == broker.keystore.epoch()
        # The checkpoints are signed by this start's session key, which the TPM
        # device key vouched for in the log.
        kinds = [e["kind"] for e in broker.audit.entries(0, 100)]
        assert "audit.session" in kinds
        from appliance.audit import verify_log

        assert verify_log(broker.config.audit_dir, pem).ok
    finally:
        broker.close()


def test_tpm_gone_mid_run_stops_privileged_work_then_recovers(
    tmp_path: Path, simulator: Swtpm
) -> None:
    broker, http, share = make(tmp_path, simulator.tcti)
    try:
        simulator.stop()
        r = http.post("/v1/intents", json=MOVE)
        assert r.status_code == 503, r.text
        assert "TPM" in r.json()["reason"] and "unreachable" in r.json()["reason"]
        assert broker.approvals.current() is None
        assert broker.db.one("SELECT COUNT(*) AS n FROM plans")["n"] == 0
        health = http.get("/healthz")
        assert health.status_code == 503 and "unreachable" in health.json()["problems"][0]
        assert (share / "Inbox" / "a.pdf").exists()

        simulator.start()  # the TPM is back: service resumes
        assert http.get("/healthz").status_code == 200
        r = http.post("/v1/intents", json=MOVE)
        assert r.status_code == 202, r.text
        broker.approvals.press("approve", source="test")
        plan = http.get(f"/v1/plans/{r.json()['plan_id']}", params={"wait": 10}).json()
        assert plan["status"] == "done"
        assert (share / "a.pdf").read_bytes() == b"%PDF a"
    finally:
        broker.close()


def test_tpm_lost_between_request_and_press_runs_nothing(tmp_path: Path, simulator: Swtpm) -> None:
    broker, http, share = make(tmp_path, simulator.tcti)
    try:
        r = http.post("/v1/intents", json=MOVE)
        assert r.status_code == 202
        simulator.stop()
        broker.approvals.press("approve", source="test")
        plan = http.get(f"/v1/plans/{r.json()['plan_id']}", params={"wait": 10}).json()
        assert plan["status"] == "failed" and "could not be signed" in plan["error"]
        assert (share / "Inbox" / "a.pdf").exists() and not (share / "a.pdf").exists()
    finally:
        simulator.start()
        broker.close()


def test_revoke_all_bumps_the_tpm_counter_across_restarts(tmp_path: Path, simulator: Swtpm) -> None:
    broker, http, _ = make(tmp_path, simulator.tcti)
    old = broker.statement
    epoch = broker.revoke_all_tokens()
    broker.close()
    restart(simulator)
    broker, http, _ = make(tmp_path, simulator.tcti)
    try:
        assert broker.keystore.epoch() == epoch == broker.statement["epoch"]
        with pytest.raises(TokenError) as e:
            verify_statement(old, broker.signer.public_key_pem(), current_epoch=epoch)
        assert e.value.code == "statement_revoked"
    finally:
        broker.close()
