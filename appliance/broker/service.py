"""The broker: the one place where a request becomes an action.

It wires the parts together in the order of the life of a request:

    intents -> scope resolution -> policy -> (approval) -> capability token
            -> executor (verify + spend, snapshot, act) -> audit log

Every step that decides something appends to the audit log before the next
step may act; if the audit log cannot be written, nothing runs (fail closed).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any

from appliance import __version__
from appliance.agent.client import AgentClient
from appliance.approval import ApprovalQueue, ApprovalRequest, Panel
from appliance.approval.gpio import make_panel
from appliance.approval.receipts import ReceiptError, sign_receipt, verify_receipt
from appliance.audit import AuditLog
from appliance.broker.clients import Clients, check_name
from appliance.broker.fileops import FileOps
from appliance.broker.plans import TERMINAL, PlanStore
from appliance.broker.scope import Shares, Target
from appliance.broker.snapshots import SnapshotStore
from appliance.broker.tasks import (
    CONTENT_MAX,
    FOLDER_NAME,
    NO_PLAN,
    TEXT_MAX,
    TaskStore,
    approval_note,
    check_from_content,
    proposal,
)
from appliance.config import Config
from appliance.db import Database
from appliance.errors import (
    ApplianceError,
    ExecutionError,
    NotFound,
    ScopeError,
    TokenError,
)
from appliance.intents import Intent, canonical_json, digest
from appliance.issuer import attestation
from appliance.issuer.choose import Opened, open_keystore
from appliance.issuer.keys import KeyStore, ephemeral_signer
from appliance.issuer.statement import RENEW_BEFORE_S, make_statement, verify_statement
from appliance.issuer.tokens import Claims, TokenService
from appliance.issuer.tpm import DEVICE_KEY_HANDLE
from appliance.plugins.host import PluginHost
from appliance.policy import Decision, PolicyEngine, PolicyRequest

log = logging.getLogger("appliance.broker")

UNDO_VERB = "action.undo"
HEALTH_INTERVAL_S = 10.0  # how often the panel's fault light is brought up to date

RECEIPTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS receipts (
    approval_id TEXT PRIMARY KEY,
    receipt TEXT NOT NULL
);
"""


@dataclass
class Evaluated:
    """One intent after scope resolution and policy."""

    intent: Intent
    resource: str  # canonical, or as given when resolution refused it
    params: dict[str, Any]  # canonical resource parameters
    decision: Decision
    digest: str


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


class Broker:
    def __init__(
        self,
        config: Config,
        *,
        keystore: KeyStore | None = None,
        panel: Panel | None = None,
    ):
        self.config = config
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._opened: Opened | None = None
        if keystore is None:
            self._opened = open_keystore(config)
            keystore = self._opened.keystore
        self.keystore = keystore
        try:
            self._start(panel)
        except BaseException:
            if self._opened is not None:
                self._opened.close()
            raise

    def _start(self, panel: Panel | None) -> None:
        config = self.config
        self.db = Database(config.db_path)
        self.signer = self.keystore.device_signer()
        boot_count = self.keystore.boot_count
        self.audit = AuditLog(
            config.audit_dir,
            self.signer,
            signer_label=self.keystore.label,
            boot_count=boot_count,
            session_signer=ephemeral_signer(unsafe=self.keystore.unsafe),
        )
        self.policy = PolicyEngine.load(config.policy_dir)
        self.tokens = TokenService(self.keystore, self.db, ttl_s=config.token_ttl_s)
        self.tokens.sync_epoch(self.keystore.epoch())
        self.statement = self._new_statement()
        self._chain_checked = ""  # signature of the statement last checked in full
        self.shares = Shares(config.shares, config.limits)
        self.snapshots = SnapshotStore(config.snapshots_dir)
        self.files = FileOps(self.shares, self.snapshots, config.limits)
        self.plans = PlanStore(self.db)
        self.tasks = TaskStore(self.db)
        self.clients = Clients(self.db, self.keystore.secret("credential_pepper"))
        self.plugins = PluginHost(self)
        self.panel = panel or make_panel(config.panel, dev=config.dev)
        self.db.ensure(RECEIPTS_SCHEMA)
        # Serialises "store the plan" against "its approval was decided".
        self._lock = threading.RLock()
        self.approvals = ApprovalQueue(
            config.approvals,
            self.panel,
            on_event=self._audit_quietly,
            on_decided=self._on_decided,
        )
        if hasattr(self.panel, "connect"):
            self.panel.connect(self.approvals)
        elif hasattr(self.panel, "attach"):
            self.panel.attach(self.approvals.press)
        self._stopping = threading.Event()
        self._recover()
        self._check_rollback(boot_count)
        self.audit.append(
            "broker.started",
            {
                "mode": "development" if config.dev else "production",
                "signer": self.keystore.label,
                "unsafe_signer": self.keystore.unsafe,
                "device_key_id": self.signer.key_id,
                "boot_count": boot_count,
                "statement": self.statement,
                "shares": sorted(config.shares),
                "panel": self.panel.name,
            },
        )
        if hasattr(self.panel, "set_fault"):  # a panel with a fault light to drive
            self._update_fault()
            self._health_thread = threading.Thread(
                target=self._watch_health, name="panel-health", daemon=True
            )
            self._health_thread.start()

    def _check_rollback(self, boot_count: int) -> None:
        """The log's newest checkpoint must come from the previous start (or this
        one): an older one means the log was put back to an earlier copy."""
        self.rollback: str | None = None
        last = self.audit.latest_checkpoint()
        if last["boot_count"] < boot_count - 1:
            self.rollback = (
                f"the audit log's newest checkpoint is from start {last['boot_count']}, "
                f"but the TPM counts {boot_count - 1} earlier starts: the log was rolled back"
            )
            log.error("%s", self.rollback)
            self.audit.append(
                "broker.audit_rollback",
                {"log_boot_count": last["boot_count"], "boot_count": boot_count},
            )

    # ------------------------------------------------------------------ the key chain
    def _new_statement(self) -> dict[str, Any]:
        root = bytes(self.keystore.token_root().public_key.to_bytes())
        return make_statement(
            self.signer,
            root,
            epoch=self.tokens.epoch(),
            boot_count=self.keystore.boot_count,
            signer_label=self.keystore.label,
        )

    def _check_chain(self) -> None:
        """The executor's first check: this start's token root is vouched for by
        the device key, not expired, and of the current epoch. Renews the
        statement (one device-key signature) an hour before it expires."""
        now = time.time()
        if self.statement["not_after"] - now < RENEW_BEFORE_S:
            self.statement = self._new_statement()
        statement, epoch = self.statement, self.tokens.epoch()
        if self._chain_checked == statement["signature"]:
            # Signature and root already checked for this statement: what can
            # change since is the clock and the epoch.
            if now >= statement["not_after"]:
                raise TokenError("the boot statement has expired", code="statement_expired")
            if statement["epoch"] < epoch:
                raise TokenError("the boot statement was revoked", code="statement_revoked")
            return
        verified = verify_statement(
            statement, self.signer.public_key_pem(), current_epoch=epoch, now=now
        )
        if verified.root_public != self.tokens.root_public():
            raise TokenError(
                "the boot statement vouches for another token root than the one in use",
                code="statement_mismatch",
            )
        self._chain_checked = statement["signature"]

    def _update_fault(self) -> None:
        """The panel's fault light follows /healthz: on while nothing
        privileged can run (TPM gone or locked out, audit log closed)."""
        set_fault = getattr(self.panel, "set_fault", None)
        if set_fault is None:
            return
        problems = self.health()["problems"]
        set_fault("; ".join(problems) if problems else None)

    def _watch_health(self) -> None:
        while not self._stopping.wait(HEALTH_INTERVAL_S):
            try:
                self._update_fault()
            except Exception:  # noqa: BLE001 - the watcher must outlive a bad check
                log.exception("health check for the panel failed")

    def close(self) -> None:
        self._stopping.set()
        if hasattr(self, "_health_thread"):
            self._health_thread.join(timeout=5)
        self.approvals.close()
        close_panel = getattr(self.panel, "close", None)
        if close_panel is not None and not self.panel.virtual:
            close_panel()
        self.audit.close()
        self.db.close()
        if self._opened is not None:
            self._opened.close()

    # ------------------------------------------------------------------ recovery
    def _recover(self) -> None:
        """After a crash or restart: approvals lived in memory, so a plan still
        waiting expires; an action that was running is settled (its token stays
        spent; the executor's ordering means no file was lost)."""
        for row in self.db.all(
            "SELECT plan_id, status FROM plans WHERE status IN (?, ?)",
            ("pending_approval", "running"),
        ):
            plan_id = row["plan_id"]
            if row["status"] == "pending_approval":
                self.plans.set_plan(plan_id, "expired", "the broker restarted before approval")
                for a in self.plans.actions(plan_id):
                    self.plans.set_action(a["action_id"], status="skipped")
                self.audit.append("plan.expired", {"plan_id": plan_id, "reason": "restart"})
                continue
            for a in self.plans.actions(plan_id):
                if a["status"] == "running":
                    self._settle(plan_id, a)
                elif a["status"] == "planned":
                    self.plans.set_action(a["action_id"], status="skipped")
            self.plans.set_plan(plan_id, "failed", "the broker stopped while the plan ran")

    def _settle(self, plan_id: str, action: dict[str, Any]) -> None:
        """An action the stop interrupted: a move, rename or delete recorded its
        undo before it changed anything, so it is brought to exactly before or
        after; if after, it counts as done and stays undoable."""
        undo = action["undo"]
        took = bool(undo) and action["verb"] != UNDO_VERB and self.files.settle_interrupted(undo)
        if took:
            self.plans.set_action(
                action["action_id"],
                status="done",
                result={"recovered": "the action had taken effect when the broker stopped"},
            )
        else:
            self.plans.set_action(action["action_id"], status="interrupted", undo=None)
        leftovers = self.files.sweep_leftovers(self._touched(action))
        self.audit.append(
            "action.interrupted",
            {
                "plan_id": plan_id,
                "action_id": action["action_id"],
                "verb": action["verb"],
                "resource": action["resource"],
                "token_id": action["token_id"],
                "snapshot_id": action["snapshot_id"],
                "took_effect": took,
                "leftovers_removed": leftovers,
            },
        )

    def _touched(self, action: dict[str, Any]) -> list[Target]:
        """The targets an action (or the action an undo reverses) worked on."""
        if action["verb"] == UNDO_VERB:
            original = self.plans.action(action["params"].get("action_id", ""))
            if original is None:
                return []
            action = original
        found = []
        for resource in (action["resource"], action["params"].get("to")):
            if isinstance(resource, str):
                with contextlib.suppress(ApplianceError):
                    found.append(self.shares.parse(resource))
        return found

    # ------------------------------------------------------------------ evaluate
    def _evaluate(self, intent: Intent, requester: str) -> Evaluated:
        params = dict(intent.params)
        targets: dict[str, Target] = {}
        try:
            target = targets["resource"] = self.shares.parse(intent.resource)
            kind = self.shares.inspect(target)
            if "to" in params:
                targets["to"] = self.shares.parse(params["to"])
                self.shares.inspect(targets["to"])
                params["to"] = targets["to"].canonical
            elif intent.verb == "file.rename":
                # The new name must be a valid name in the same directory.
                targets["to"] = self.shares.parse(target.parent().child(params["name"]).canonical)
                self.shares.inspect(targets["to"])
        except ScopeError as e:
            decision = Decision("deny", "high", (e.reason,))
            resource = intent.resource
        else:
            resource = target.canonical
            to = targets.get("to")
            decision = self.policy.decide(
                PolicyRequest(
                    verb=intent.verb,
                    requester=requester,
                    share=target.share,
                    path="/".join(target.parts),
                    to_share=to.share if to else None,
                    to_path="/".join(to.parts) if to else None,
                    derived_fields=tuple(intent.derived_fields()),
                    is_dir=None if kind is None else kind == "dir",
                )
            )
        body = {
            "verb": intent.verb,
            "resource": resource,
            "params": params,
            "provenance": {k: v.value for k, v in intent.provenance.items()},
            "requester": requester,
        }
        return Evaluated(intent, resource, params, decision, digest(body))

    # ------------------------------------------------------------------ submit
    def submit(
        self, requester: str, intents: list[Intent], *, via: str | None = None
    ) -> dict[str, Any]:
        """Decide a plan as a whole; run it now, queue it for approval, or refuse it.

        ``via`` names what proposed the plan for the requester (a plugin), for
        the approval's summary."""
        plan_id = _id("plan")
        evaluated = [self._evaluate(i, requester) for i in intents]
        summary = self._summary(requester, evaluated)
        if via:
            summary = f"[{via}] {summary}"
        return self._store_and_start(plan_id, "intents", requester, evaluated, summary)

    def submit_undo(self, requester: str, action_id: str) -> dict[str, Any]:
        """Undo one action: a plan of one ``action.undo`` intent, approved like any write."""
        return self._undo_plan(requester, [self._undoable(action_id)])

    def submit_plan_undo(self, requester: str, plan_id: str) -> dict[str, Any]:
        """Undo every done action of a plan, newest first, under one approval."""
        if self.plans.plan_row(plan_id) is None:
            raise NotFound(f"no plan {plan_id!r}")
        actions = [
            a
            for a in self.plans.actions(plan_id)
            if a["status"] == "done" and a["undo"] and not a["undone_by"]
        ]
        if not actions:
            raise ApplianceError(
                f"plan {plan_id} has no action left to undo", code="not_undoable", status=409
            )
        return self._undo_plan(
            requester, [self._undoable(a["action_id"]) for a in reversed(actions)]
        )

    def _undoable(self, action_id: str) -> dict[str, Any]:
        action = self.plans.action(action_id)
        if action is None:
            raise NotFound(f"no action {action_id!r}")
        if action["undone_by"]:
            raise ApplianceError(
                f"action {action_id} was already undone by {action['undone_by']}",
                code="already_undone",
                status=409,
            )
        if action["status"] != "done" or not action["undo"]:
            why = (
                "it changed nothing"
                if action["status"] == "done"
                else (f"its status is {action['status']}")
            )
            raise ApplianceError(
                f"action {action_id} cannot be undone: {why}", code="not_undoable", status=409
            )
        return action

    def _undo_plan(self, requester: str, actions: list[dict[str, Any]]) -> dict[str, Any]:
        plan_id = _id("plan")
        evaluated = []
        for action in actions:
            target = self.shares.parse(action["resource"])
            decision = self.policy.decide(
                PolicyRequest(
                    verb=UNDO_VERB,
                    requester=requester,
                    share=target.share,
                    path="/".join(target.parts),
                )
            )
            params = {"action_id": action["action_id"]}
            body = {
                "verb": UNDO_VERB,
                "resource": action["resource"],
                "params": params,
                "provenance": {},
                "requester": requester,
            }
            intent = Intent.model_construct(
                verb=UNDO_VERB, resource=action["resource"], params=params, provenance={}
            )
            evaluated.append(Evaluated(intent, action["resource"], params, decision, digest(body)))
        first = actions[0]
        more = f" (+{len(actions) - 1} more)" if len(actions) > 1 else ""
        summary = (
            f"{self._client_name(requester)} wants to undo "
            f"{first['verb']} {first['resource']}{more}"
        )
        return self._store_and_start(plan_id, "undo", requester, evaluated, summary)

    def _summary(self, requester: str, evaluated: list[Evaluated]) -> str:
        name = self._client_name(requester)
        parts = []
        for e in evaluated[:3]:
            to = e.params.get("to") or e.params.get("name")
            parts.append(f"{e.intent.verb} {e.resource}" + (f" -> {to}" if to else ""))
        more = f" (+{len(evaluated) - 3} more)" if len(evaluated) > 3 else ""
        return f"{name} wants to: " + "; ".join(parts) + more

    def _client_name(self, client_id: str) -> str:
        row = self.db.one("SELECT name FROM clients WHERE client_id = ?", (client_id,))
        return f"{row['name']} ({client_id})" if row else client_id

    def _store_and_start(
        self,
        plan_id: str,
        kind: str,
        requester: str,
        evaluated: list[Evaluated],
        summary: str,
    ) -> dict[str, Any]:
        """A plan is decided as a whole: any deny refuses it, any approve puts
        all of it behind one approval, otherwise it runs now."""
        decisions = {e.decision.decision for e in evaluated}
        status = (
            "denied"
            if "deny" in decisions
            else "pending_approval"
            if "approve" in decisions
            else "running"
        )
        plan_digest = digest(
            {"plan_id": plan_id, "requester": requester, "intents": [e.digest for e in evaluated]}
        )
        decided = {
            "plan_id": plan_id,
            "kind": kind,
            "requester": requester,
            "digest": plan_digest,
            "status": status,
            "intents": [
                {
                    "verb": e.intent.verb,
                    "resource": e.resource,
                    "intent_digest": e.digest,
                    "decision": e.decision.decision,
                    "risk": e.decision.risk,
                    "reasons": list(e.decision.reasons),
                    "derived_fields": e.intent.derived_fields() if kind == "intents" else [],
                }
                for e in evaluated
            ],
        }
        with self._lock:
            approval: ApprovalRequest | None = None
            if status == "pending_approval":
                # Privileged work needs the TPM (its receipt is signed there):
                # if it is gone or locked out, refuse now, before anyone presses.
                self._require_tpm()
                try:
                    approval = self.approvals.submit(
                        kind="undo" if kind == "undo" else "plan",
                        subject_id=plan_id,
                        requester=requester,
                        summary=summary,
                        digest=plan_digest,
                    )
                except ApplianceError as e:
                    self.audit.append("plan.refused", {**decided, "reason": e.reason})
                    raise
            try:
                # The decision is on the record before anything may act on it.
                self.audit.append(
                    "plan.decided",
                    {**decided, "approval_id": approval.approval_id if approval else None},
                )
                self._insert_plan(
                    plan_id, kind, requester, plan_digest, status, evaluated, approval
                )
            except BaseException:
                if approval is not None:
                    self.approvals.cancel(approval.approval_id)
                raise
        if status == "running":
            self._run(plan_id, None)
        return self.plans.public(plan_id)  # type: ignore[return-value]

    def _insert_plan(
        self,
        plan_id: str,
        kind: str,
        requester: str,
        plan_digest: str,
        status: str,
        evaluated: list[Evaluated],
        approval: ApprovalRequest | None,
    ) -> None:
        import json

        # Not fsync'd: the plan's decision is already durable in the audit log.
        with self.db.tx(durable=False) as conn:
            conn.execute(
                "INSERT INTO plans (plan_id, kind, requester, status, digest, approval_id, code,"
                " created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    plan_id,
                    kind,
                    requester,
                    status,
                    plan_digest,
                    approval.approval_id if approval else None,
                    approval.code if approval else None,
                    time.time(),
                ),
            )
            for idx, e in enumerate(evaluated):
                conn.execute(
                    "INSERT INTO actions (action_id, plan_id, idx, verb, resource, params,"
                    " provenance, intent_digest, decision, risk, reasons, status, undo_of)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        _id("act"),
                        plan_id,
                        idx,
                        e.intent.verb,
                        e.resource,
                        json.dumps(e.params),
                        json.dumps({k: v.value for k, v in e.intent.provenance.items()}),
                        e.digest,
                        e.decision.decision,
                        e.decision.risk,
                        json.dumps(list(e.decision.reasons)),
                        "refused" if status == "denied" else "planned",
                        e.params.get("action_id") if e.intent.verb == UNDO_VERB else None,
                    ),
                )

    # ------------------------------------------------------------------ approvals
    def _on_decided(self, request: ApprovalRequest) -> None:
        with self._lock:  # the plan is stored before its approval can be handled
            pass
        self.audit.append(
            "approval.decided",
            {
                "approval_id": request.approval_id,
                "kind": request.kind,
                "subject_id": request.subject_id,
                "digest": request.digest,
                "status": request.status,
                "decided_by": request.decided_by,
                "gesture": request.gesture,
            },
        )
        if request.kind == "pairing":
            self.clients.set_pairing_status(request.subject_id, request.status)
            return
        plan_id = request.subject_id
        if request.status != "approved":
            self.plans.set_plan(
                plan_id,
                # Only a press denies; no answer (timeout, shutdown) expires.
                "denied" if request.status == "denied" else "expired",
                f"approval {request.status}"
                + (f" ({request.decided_by})" if request.decided_by else ""),
            )
            for a in self.plans.actions(plan_id):
                self.plans.set_action(a["action_id"], status="skipped")
            return
        try:
            receipt = self._receipt(request)
        except ApplianceError as e:
            # No signed receipt (the TPM went away): the approval cannot be
            # proved, so nothing runs.
            self.plans.set_plan(plan_id, "failed", f"the approval could not be signed: {e.reason}")
            for a in self.plans.actions(plan_id):
                self.plans.set_action(a["action_id"], status="skipped")
            self._audit_quietly(
                "plan.failed", {"plan_id": plan_id, "reason": e.reason, "code": e.code}
            )
            return
        threading.Thread(
            target=self._run, args=(plan_id, receipt), daemon=True, name=f"plan-{plan_id}"
        ).start()

    def _receipt(self, request: ApprovalRequest) -> dict[str, Any]:
        """What the press approved, signed by the device key (see
        approval/receipts.py): the audit log can prove which press authorised
        which action. Stored, so the executor can check it again."""
        receipt = sign_receipt(
            self.signer,
            approval_id=request.approval_id,
            kind=request.kind,
            subject_id=request.subject_id,
            request_digest=request.digest,
            decided_by=request.decided_by,
            gesture=request.gesture,
            signer_label=self.keystore.label,
        )
        self.audit.append("approval.receipt", receipt)
        self.db.execute(
            "INSERT INTO receipts (approval_id, receipt) VALUES (?, ?)",
            (request.approval_id, canonical_json(receipt).decode()),
        )
        return receipt

    def approval_receipt(
        self, approval_id: str, conn: sqlite3.Connection | None = None
    ) -> dict[str, Any]:
        """The stored receipt of an approval, checked against the device key."""
        import json

        sql = "SELECT receipt FROM receipts WHERE approval_id = ?"
        row = (
            conn.execute(sql, (approval_id,)).fetchone()
            if conn
            else self.db.one(sql, (approval_id,))
        )
        if row is None:
            raise NotFound(f"no receipt for approval {approval_id!r}")
        return verify_receipt(
            json.loads(row["receipt"]), self.signer.public_key_pem(), approval_id=approval_id
        )

    def _check_receipt(
        self, plan: dict[str, Any], expected: Claims, conn: sqlite3.Connection
    ) -> None:
        """An approved plan runs only on its own, intact, signed receipt, and
        only with tokens that cite it (checked in the spend's transaction, so
        a refusal leaves the token unspent)."""
        if plan["approval_id"] is None:
            if expected.receipt_digest is not None:
                raise ReceiptError("a plan that needed no approval cites a receipt")
            return
        try:
            receipt = self.approval_receipt(plan["approval_id"], conn)
        except NotFound:
            raise ReceiptError(
                f"plan {plan['plan_id']} has no signed receipt for its approval"
            ) from None
        verify_receipt(
            receipt,
            self.signer.public_key_pem(),
            approval_id=plan["approval_id"],
            request_digest=plan["digest"],
            receipt_digest_expected=expected.receipt_digest,
        )

    # ------------------------------------------------------------------ execute
    def _run(self, plan_id: str, receipt: dict[str, Any] | None) -> None:
        """Run a plan's actions in order; a failure stops the rest."""
        plan = self.plans.plan_row(plan_id)
        assert plan is not None
        if plan["status"] != "running":
            self.plans.set_plan(plan_id, "running")
        failed: str | None = None
        for action in self.plans.actions(plan_id):
            if failed:
                self.plans.set_action(action["action_id"], status="skipped")
                continue
            try:
                self._run_action(plan, action, receipt)
                continue
            except ApplianceError as e:
                error = e.to_dict()
            except Exception as e:  # noqa: BLE001 - an executor bug must not leave the plan running
                log.exception("action %s crashed", action["action_id"])
                error = {"code": "internal", "reason": f"internal error: {type(e).__name__}"}
            failed = f"{action['verb']} {action['resource']}: {error['reason']}"
            self.plans.set_action(action["action_id"], status="failed", result={"error": error})
            self._audit_quietly(
                "action.failed",
                {
                    "plan_id": plan_id,
                    "action_id": action["action_id"],
                    "intent_digest": action["intent_digest"],
                    "error": error,
                },
            )
        self.plans.set_plan(plan_id, "failed" if failed else "done", failed)

    def _run_action(
        self, plan: dict[str, Any], action: dict[str, Any], receipt: dict[str, Any] | None
    ) -> None:
        claims = Claims(
            action_id=action["action_id"],
            verb=action["verb"],
            resource=action["resource"],
            intent_digest=action["intent_digest"],
            requester=plan["requester"],
            approval_id=plan["approval_id"],
            receipt_digest=receipt["receipt_digest"] if receipt else None,
        )
        token = self.tokens.mint(claims)
        self.execute(token, claims, action)

    def execute(self, token: str, expected: Claims, action: dict[str, Any]) -> dict[str, Any]:
        """The executor: verify the capability, spend it, snapshot, act, audit.

        ``expected`` is rebuilt from the stored, decided action, never taken from
        the token, so a token for anything else is refused."""
        if action["decision"] == "deny":
            raise ExecutionError("a denied intent never runs", code="denied", status=403)

        def running(conn: sqlite3.Connection, token_id: str) -> None:
            self._check_receipt(plan, expected, conn)
            # Spent and "running" land together: after a crash, an action whose
            # token is spent is known to have maybe begun.
            conn.execute(
                "UPDATE actions SET status = 'running', token_id = ? WHERE action_id = ?",
                (token_id, action["action_id"]),
            )

        self._check_chain()
        plan = self.plans.plan_row(action["plan_id"])
        if plan is None:
            raise ExecutionError("the action's plan is gone", code="not_found", status=404)
        verified = self.tokens.verify_and_spend(token, expected, on_spend=running)
        if action["verb"] == UNDO_VERB:
            original = self.plans.action(action["params"]["action_id"])
            if original is None or original["undone_by"]:
                raise ExecutionError("the action is gone or already undone", code="not_undoable")
            result = self.files.undo(original["undo"])
            # Undoing a write or copy saves the removed file first.
            snapshot_id, undo = result.get("snapshot_id"), None
            self.plans.set_action(
                original["action_id"], undone_by=action["action_id"], status="undone"
            )
        else:
            # Parsed again from the stored, canonical form; the file actions walk
            # the path with O_NOFOLLOW themselves when they act.
            params = dict(action["params"])
            if "to" in params:
                params["to"] = self.shares.parse(params["to"])

            def record(snapshot_id: str, undo: dict[str, Any]) -> None:
                # How to undo it is on record before the change begins.
                self.plans.set_action(action["action_id"], snapshot_id=snapshot_id, undo=undo)

            outcome = self.files.execute(
                action["verb"], self.shares.parse(action["resource"]), params, before_change=record
            )
            result, snapshot_id, undo = outcome.result, outcome.snapshot_id, outcome.undo
        self.plans.set_action(
            action["action_id"], status="done", result=result, snapshot_id=snapshot_id, undo=undo
        )
        self.audit.append(
            "action.done",
            {
                "plan_id": action["plan_id"],
                "action_id": action["action_id"],
                "verb": action["verb"],
                "resource": action["resource"],
                "intent_digest": action["intent_digest"],
                "token_id": verified.token_id,
                "approval_id": expected.approval_id,
                "receipt_digest": expected.receipt_digest,
                "snapshot_id": snapshot_id,
                "result": _audit_result(result),
            },
        )
        return result

    # ------------------------------------------------------------------ tasks
    def submit_task(
        self, requester: str, text: str, from_content: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Free text from a paired desktop: the agent plans it in the background.

        ``from_content`` ({"field": "year", "type": "integer"}) asks for each
        planned move's destination folder to be a value found *inside* the file
        (see :meth:`_fill_from_content`)."""
        if from_content is not None:
            check_from_content(from_content)
        if not text.strip() or len(text) > TEXT_MAX:
            raise ApplianceError(
                f"a task is 1 to {TEXT_MAX} characters of text", code="invalid_request", status=422
            )
        text_sha256 = hashlib.sha256(text.encode()).hexdigest()
        task_id = self.tasks.create(requester, text_sha256)
        # The words themselves are not kept: the log holds their hash.
        self.audit.append(
            "task.received",
            {"task_id": task_id, "requester": requester, "text_sha256": text_sha256},
        )
        threading.Thread(
            target=self._run_task,
            args=(task_id, requester, text, from_content),
            daemon=True,
            name=task_id,
        ).start()
        return self.task_public(task_id)

    def _run_task(
        self, task_id: str, requester: str, text: str, from_content: dict[str, str] | None
    ) -> None:
        try:
            listing = self.listing()
            result = self._agent().plan(text, listing)
            model = {"model_id": result["model_id"], "model_sha256": result["model_sha256"]}
            if result.get("kind") in NO_PLAN:
                # Nothing is proposed: the task ends with the model's question
                # or reason, and the requester asks again.
                status = NO_PLAN[result["kind"]]
                self.audit.append("task.planned", {"task_id": task_id, **model, **proposal(result)})
                self.tasks.update(
                    task_id, status, status=status, detail={**model, **proposal(result)}, **model
                )
                return
            try:
                intents = [Intent.model_validate(i) for i in result["intents"]]
                if from_content is not None:
                    intents = self._fill_from_content(task_id, intents, from_content)
                if not intents:
                    raise ValueError("the plan is empty")
            except (ValueError, TypeError, KeyError) as e:
                raise ApplianceError(
                    f"the model's plan is not a valid plan of intents ({e})",
                    code="agent_invalid_plan",
                    status=502,
                ) from None
            self.audit.append(
                "task.planned",
                {
                    "task_id": task_id,
                    **model,
                    "seconds": result.get("seconds"),
                    "tokens": result.get("tokens"),
                    "intents": [i.model_dump(mode="json") for i in intents],
                    **proposal(result),
                },
            )
            self.tasks.update(
                task_id,
                "planned",
                status="planned",
                time_to_plan_s=result.get("seconds"),
                detail={**model, "intents": len(intents), **proposal(result)},
                **model,
            )
            plan = self.submit(requester, intents, via=approval_note(result))
        except ApplianceError as e:
            self._audit_quietly("task.failed", {"task_id": task_id, "error": e.to_dict()})
            self.tasks.update(
                task_id, "failed", status="failed", error=e.reason, detail=e.to_dict()
            )
            return
        except Exception as e:  # noqa: BLE001 - a bug must still end the task
            log.exception("task %s crashed", task_id)
            self.tasks.update(
                task_id, "failed", status="failed", error=f"internal error: {type(e).__name__}"
            )
            return
        self._follow(task_id, plan)

    def _follow(self, task_id: str, plan: dict[str, Any]) -> None:
        """Report the plan's progress on the task until it ends."""
        status = plan["status"]
        self.tasks.update(
            task_id,
            status,
            status=status,
            plan_id=plan["plan_id"],
            detail={
                "plan_id": plan["plan_id"],
                "approval_id": plan["approval_id"],
                "code": plan["code"],
            },
        )
        while status not in TERMINAL:
            time.sleep(0.1)
            now = self.plans.plan_row(plan["plan_id"])
            if now is None or now["status"] == status:
                continue
            status = now["status"]
            self.tasks.update(task_id, status, status=status, detail={"error": now["error"]})

    def _fill_from_content(
        self, task_id: str, intents: list[Intent], spec: dict[str, str]
    ) -> list[Intent]:
        """The quarantined step: the plan was made from names only; now each
        moved file's content is read (bounded) and given to the agent's
        extractor, which returns one value, as data. That value may only become
        the name of the destination folder (one path component, checked) beside
        the one the plan chose; it is tagged ``provenance: content``, so policy
        never plainly allows the move, and it can add no verb and no target
        outside the plan. A file whose value is missing or unusable is left out.
        """
        agent = self._agent()
        field, kind = spec["field"], spec["type"]
        moves: list[Intent] = []
        folders: dict[str, Target] = {}
        for intent in intents:
            if intent.verb != "file.move":
                continue
            src = self.shares.parse(intent.resource)
            dest = self.shares.parse(intent.params["to"])
            read = self.files.execute("file.read", src, {"max_bytes": CONTENT_MAX})
            content = read.result["content"]
            if read.result.get("encoding") == "base64":
                content = base64.b64decode(content).decode("utf-8", "replace")
            value = agent.extract(content, {field: kind})["values"][field]
            folder = str(value).strip() if value is not None else ""
            if not FOLDER_NAME.fullmatch(folder) or len(dest.parts) < 2:
                self.tasks.update(task_id, "extract_skipped", detail={"resource": src.canonical})
                continue
            folder_target = Target(dest.share, (*dest.parts[:-2], folder))
            folders[folder_target.canonical] = folder_target
            moves.append(
                Intent(
                    verb="file.move",
                    resource=src.canonical,
                    params={"to": folder_target.child(dest.parts[-1]).canonical},
                    provenance={"params.to": "content"},
                )
            )
            self.tasks.update(
                task_id, "extracted", detail={"resource": src.canonical, "folder": folder}
            )
        mkdirs = [
            Intent(verb="file.mkdir", resource=name, provenance={"resource": "content"})
            for name, target in sorted(folders.items())
            if self.shares.inspect(target) is None
        ]
        # Kept: what the plan did besides moves (minus folders it made for them).
        others = [i for i in intents if i.verb not in ("file.move", "file.mkdir")]
        return others + mkdirs + moves

    def listing(self, max_entries: int = 500, max_depth: int = 4) -> dict[str, list[str]]:
        """The names in each share (directories end with "/"), bounded: all
        the planner ever sees of the files."""
        out: dict[str, list[str]] = {}
        for share in sorted(self.config.shares):
            names: list[str] = []
            queue: list[tuple[str, ...]] = [()]
            while queue and len(names) < max_entries:
                parts = queue.pop(0)
                try:
                    listed = self.files.execute("file.list", Target(share, parts), {})
                except ApplianceError:
                    continue
                for entry in sorted(listed.result["entries"], key=lambda e: e["name"]):
                    rel = "/".join((*parts, entry["name"]))
                    if entry["type"] == "dir":
                        names.append(rel + "/")
                        if len(parts) + 1 < max_depth:
                            queue.append((*parts, entry["name"]))
                    elif entry["type"] == "file":
                        names.append(rel)
            out[share] = names[:max_entries]
        return out

    def _agent(self) -> AgentClient:
        return AgentClient(
            self.config.agent_socket_path,
            agent_uid=self.config.agent_uid,
            timeout_s=self.config.agent_timeout_s,
        )

    def task_public(self, task_id: str) -> dict[str, Any]:
        row = self.tasks.row(task_id)
        if row is None:
            raise NotFound(f"no task {task_id!r}")
        return {
            "task_id": task_id,
            "status": row["status"],
            "plan_id": row["plan_id"],
            "plan": self.plans.public(row["plan_id"]) if row["plan_id"] else None,
            "model": {"id": row["model_id"], "sha256": row["model_sha256"]}
            if row["model_id"]
            else None,
            "time_to_plan_s": row["time_to_plan_s"],
            "error": row["error"],
            "events": row["events"],
        }

    def _audit_quietly(self, kind: str, data: dict[str, Any]) -> None:
        try:
            self.audit.append(kind, data)
        except ApplianceError:
            log.exception("could not audit %s", kind)

    # ------------------------------------------------------------------ pairing
    def request_pairing(self, name: str, address: str = "local") -> dict[str, Any]:
        """A desktop asks to pair. ``address`` (the caller's IP) is the requester,
        so one LAN device cannot fill the approval queue under many names."""
        name = check_name(name)
        decision = self.policy.decide(
            PolicyRequest(verb="client.pair", requester=f"unpaired:{address}", share=None, path="")
        )
        if decision.decision == "deny":
            self.audit.append(
                "pairing.refused",
                {"name": name, "address": address, "reasons": list(decision.reasons)},
            )
            raise ApplianceError(
                "pairing refused: " + " ".join(decision.reasons), code="denied", status=403
            )
        if not self.panel.virtual and self.approvals.pairing_window() is None:
            # A physical box listens for pairing only after its owner opened a
            # window at the box: a LAN device cannot even ask otherwise.
            self.audit.append(
                "pairing.refused",
                {"name": name, "address": address, "reasons": ["the pairing window is closed"]},
            )
            raise ApplianceError(
                "pairing is closed: hold the box's button for "
                f"{self.config.panel.pairing_hold_s:g} seconds while its light is idle to open "
                f"a pairing window ({self.config.approvals.pairing_window_s:g} s), then pair again",
                code="pairing_closed",
                status=403,
            )
        # Even a policy that "allows" pairing gets a press: a credential is
        # only ever handed out after a person said yes at the box.
        with self._lock:
            pairing_id = self.clients.new_pairing(name)
            pair_digest = digest({"pairing_id": pairing_id, "name": name})
            try:
                approval = self.approvals.submit(
                    kind="pairing",
                    subject_id=pairing_id,
                    requester=f"unpaired:{address}",
                    summary=f"A desktop named {name!r} at {address} asks to pair",
                    digest=pair_digest,
                )
            except ApplianceError:
                self.clients.drop_pairing(pairing_id)
                raise
            self.clients.attach_approval(pairing_id, approval.approval_id, approval.code)
            self.audit.append(
                "pairing.requested",
                {
                    "pairing_id": pairing_id,
                    "name": name,
                    "address": address,
                    "approval_id": approval.approval_id,
                },
            )
        return {
            "pairing_id": pairing_id,
            "code": approval.code,
            "approval_id": approval.approval_id,
        }

    def pairing_result(self, pairing_id: str) -> dict[str, Any]:
        out = self.clients.deliver(pairing_id)
        if "credential" in out:
            self.audit.append(
                "client.paired", {"pairing_id": pairing_id, "client_id": out["client_id"]}
            )
        return out

    def _require_tpm(self) -> None:
        tpm = getattr(self.keystore, "tpm", None)
        if tpm is not None:
            tpm.check()

    def attestation(self, nonce: bytes) -> dict[str, Any]:
        """A TPM2_Quote over the sealing PCRs and a TPM2_Certify of the device
        key, both by the attestation key and both carrying the caller's nonce."""
        tpm = getattr(self.keystore, "tpm", None)
        if tpm is None:
            raise ApplianceError(
                "attestation needs the TPM; this box runs on the UNSAFE development key",
                code="no_tpm",
                status=501,
            )
        pcrs = sorted(self.config.seal_pcrs)
        return {
            "quote": attestation.quote(tpm, nonce, pcrs),
            "certify": attestation.certify(tpm, nonce, DEVICE_KEY_HANDLE),
            "ak_pem": attestation.ak_public_pem(tpm).decode(),
            "ek_pem": (self.config.keys_dir / "ek.pub.pem").read_text(),
            "device_key_pem": self.signer.public_key_pem().decode(),
        }

    def revoke_all_tokens(self) -> int:
        """Bump the epoch (the TPM's NV counter): every earlier boot statement and
        capability token is refused from now on; a new statement is signed."""
        epoch = self.tokens.sync_epoch(self.keystore.bump_epoch())
        self.statement = self._new_statement()
        self.audit.append("tokens.revoked_all", {"epoch": epoch, "statement": self.statement})
        return epoch

    def revoke_client(self, client_id: str) -> None:
        self.clients.revoke(client_id)
        self.audit.append("client.revoked", {"client_id": client_id})

    # ------------------------------------------------------------------ status
    def wait_plan(self, plan_id: str, wait_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + max(0.0, wait_s)
        while True:
            plan = self.plans.public(plan_id)
            if plan is None:
                raise NotFound(f"no plan {plan_id!r}")
            if plan["status"] in TERMINAL or time.monotonic() >= deadline:
                return plan
            time.sleep(0.05)

    def health(self) -> dict[str, Any]:
        """What /healthz answers: whether privileged actions can run, and if not, why."""
        problems = []
        if self.audit.closed:
            problems.append(
                f"the audit log is unavailable ({self.audit.failure or 'closed'}); "
                "nothing can run until it is repaired and the broker restarted"
            )
        tpm = getattr(self.keystore, "tpm", None)
        if tpm is not None:
            try:
                tpm.check()
            except ApplianceError as e:
                problems.append(e.reason)
        warnings = []
        if self.keystore.unsafe:
            warnings.append("keys are UNSAFE development keys, not in a TPM")
        if self.rollback:
            warnings.append(self.rollback)
        return {
            "status": "ok" if not problems else "unavailable",
            "problems": problems,
            "warnings": warnings,
            "mode": "development" if self.config.dev else "production",
            "signer": self.keystore.label,
            "unsafe_signer": self.keystore.unsafe,
            "panel": self.panel.name,
            "version": __version__,
        }

    def status(self) -> dict[str, Any]:
        current = self.approvals.current()
        return {
            "mode": "development" if self.config.dev else "production",
            "signer": self.keystore.label,
            "unsafe_signer": self.keystore.unsafe,
            "device_key_id": self.signer.key_id,
            "panel": {
                "name": self.panel.name,
                "virtual": self.panel.virtual,
                **(self.panel.snapshot() if hasattr(self.panel, "snapshot") else {}),
            },
            "shares": {name: str(path) for name, path in self.config.shares.items()},
            "pending_approval": self.approvals.public(current.approval_id) if current else None,
            "waiting_approvals": max(0, len(self.approvals.list()) - 1),
            "pairing_window_s": self.approvals.pairing_window(),
            "lockouts": self.approvals.lockouts(),
            "audit_size": self.audit.size,
            "epoch": self.tokens.epoch(),
        }


def _audit_result(result: dict[str, Any]) -> dict[str, Any]:
    """Results go to the audit log without file contents: a hash stands in."""
    if "content" not in result:
        return result
    out = dict(result)
    out["content_sha256"] = digest(out.pop("content"))
    return out


__all__ = ["Broker"]
