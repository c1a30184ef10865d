"""The broker: the orchestration of a plan, in the order of the life of a request.

    intents -> evaluation (scope + policy) -> plan.decided in the audit log
            -> (approval: the panel, a signed receipt) -> executor
            -> action.done in the audit log

Every step that decides something appends to the audit log before the next
step may act; if the audit log cannot be written, nothing runs (fail closed).

The parts are built from the configuration in one place (``appliance.box``)
and handed in; each is a module with one idea: evaluation (``evaluate.py``),
the executor (``executor.py``), crash recovery (``recovery.py``), tasks
(``tasks.py``), pairing (``pairing.py``), receipts
(``appliance.approval.receipts``), plans (``plans.py``).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from appliance.agent.client import AgentClient
from appliance.approval import ApprovalRequest
from appliance.broker import state
from appliance.broker.evaluate import Evaluated, plan_digest
from appliance.broker.pairing import Pairing
from appliance.broker.plans import (
    ActionRow,
    ActionStatus,
    NewAction,
    PlanKind,
    PlanStatus,
)
from appliance.broker.state import Parts
from appliance.broker.summary import needs_console, origin_label, plan_summary
from appliance.broker.taskrunner import TaskRunner
from appliance.broker.views import Views
from appliance.errors import ApplianceError, NotFound
from appliance.intents import Intent
from appliance.issuer import attestation
from appliance.verbs import CHANGE_VERBS, READ_VERBS, UNDO_VERB

log = logging.getLogger("appliance.broker")

HEALTH_INTERVAL_S = 10.0  # how often the panel's fault light is brought up to date
MAINTENANCE_S = 60.0  # how often old read results are made small


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


class Broker:
    def __init__(self, parts: Parts, *, rollback: str | None, close: Callable[[], None]) -> None:
        self.parts = parts
        self.config = parts.config
        self.keystore = parts.keystore
        self.signer = parts.signer
        self.db = parts.db
        self.audit = parts.audit
        self.policy = parts.policy
        self.tokens = parts.tokens
        self.chain = parts.chain
        self.shares = parts.shares
        self.files = parts.files
        self.retention = parts.retention
        self.plans = parts.plans
        self.clients = parts.clients
        self.receipts = parts.receipts
        self.panel = parts.panel
        self.approvals = parts.approvals
        self.plugins = parts.plugins
        self.evaluator = parts.evaluator
        self.executor = parts.executor
        self.rollback = rollback
        self._close_parts = close
        # Serialises "store the plan" against "its approval was decided".
        self._lock = threading.RLock()
        self.pairing = Pairing(
            config=self.config,
            clients=self.clients,
            policy=self.policy,
            approvals=self.approvals,
            panel=self.panel,
            audit=self.audit,
            lock=self._lock,
        )
        self.tasks = TaskRunner(
            tasks=parts.task_store,
            plans=self.plans,
            shares=self.shares,
            audit=self.audit,
            limits=self.config.limits,
            agent=self._agent,
            requester=self.evaluator.requester,
            submit=self.submit,
        )
        self.views = Views(
            evaluator=self.evaluator,
            plans=self.plans,
            tasks=self.tasks,
            approvals=self.approvals,
            audit=self.audit,
        )
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.approvals.listen(self.audit.append_quietly, self._on_decided)

    def start(self) -> None:
        """On the record, and the fault light kept up to date."""
        self.audit.append(
            "broker.started",
            {
                "mode": "development" if self.config.dev else "production",
                "signer": self.keystore.label,
                "unsafe_signer": self.keystore.unsafe,
                "device_key_id": self.signer.key_id,
                "boot_count": self.keystore.boot_count,
                "statement": self.statement,
                "shares": sorted(self.config.shares),
                "panel": self.panel.name,
            },
        )
        self.tasks.resume()
        if self.panel.fault_light:
            self._update_fault()
            self._every(HEALTH_INTERVAL_S, self._update_fault, "panel-health")
        self._every(MAINTENANCE_S, self.maintain, "maintenance")

    def _every(self, seconds: float, job: Callable[[], object], name: str) -> None:
        def loop() -> None:
            while not self._stopping.wait(seconds):
                try:
                    job()
                except Exception:  # noqa: BLE001 - the loop must outlive a bad run
                    log.exception("%s failed", name)

        thread = threading.Thread(target=loop, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def maintain(self, now: float | None = None) -> dict[str, int]:
        """Keep the state small: read results past their window keep only a
        digest and size, read-only plans only their summary."""
        before = (time.time() if now is None else now) - self.config.limits.read_results_s
        plans, results = self.plans.compact(before)
        return {"plans_compacted": plans, "results_shortened": results}

    @property
    def statement(self) -> dict[str, Any]:
        """This start's boot statement (the device key vouching for the token root)."""
        return self.chain.statement

    def close(self) -> None:
        self._stopping.set()
        self.tasks.close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._close_parts()

    # ------------------------------------------------------------------ submit
    def submit(
        self,
        requester: str,
        intents: list[Intent],
        *,
        via: str | None = None,
        origin: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Decide a plan as a whole; run it now, queue it for approval, or refuse it.

        ``via`` names what proposed the plan for the requester (a plugin);
        ``origin`` says the box's model did (``task_id``, ``model_id``,
        ``model_sha256``). Both are kept with the plan, for the approval's
        summary and the console."""
        origin = origin or ({"via": via} if via else None)
        evaluated = [self.evaluator.evaluate(i, requester) for i in intents]
        summary = origin_label(origin) + plan_summary(
            self.clients.display_name(requester), evaluated
        )
        return self._decide(PlanKind.intents, requester, evaluated, summary, origin)

    def run_plugin(self, requester: str, name: str, verb: str, value: Any = None) -> dict[str, Any]:
        """Run a plugin's verb for ``requester``; what it proposes becomes one plan."""
        return self.plugins.run(requester, name, verb, value, submit=self.submit)

    def submit_undo(self, requester: str, action_id: str) -> dict[str, Any]:
        """Undo one action: a plan of one ``action.undo`` intent, approved like any write."""
        return self._undo_plan(requester, [self._undoable(requester, action_id)])

    def submit_plan_undo(self, requester: str, plan_id: str) -> dict[str, Any]:
        """Undo every done action of a plan, newest first, under one approval."""
        plan = self.plans.plan_row(plan_id)
        if plan is None or not self._may_undo(requester, plan.requester):
            raise NotFound(f"no plan {plan_id!r}")
        actions = [a for a in self.plans.actions(plan_id) if a.undoable]
        if not actions:
            raise ApplianceError(
                f"plan {plan_id} has no action left to undo", code="not_undoable", status=409
            )
        return self._undo_plan(
            requester, [self._undoable(requester, a.action_id) for a in reversed(actions)]
        )

    def _may_undo(self, requester: str, owner: str) -> bool:
        """A desktop undoes its own actions; only the box's console anyone's."""
        if requester == owner:
            return True
        client = self.evaluator.requester(requester)
        return client is not None and client.grant.owner

    def _undoable(self, requester: str, action_id: str) -> ActionRow:
        action = self.plans.action(action_id)
        plan = self.plans.plan_row(action.plan_id) if action else None
        if action is None or plan is None or not self._may_undo(requester, plan.requester):
            raise NotFound(f"no action {action_id!r}")
        if action.undone_by:
            raise ApplianceError(
                f"action {action_id} was already undone by {action.undone_by}",
                code="already_undone",
                status=409,
            )
        if not action.undoable:
            why = (
                "it changed nothing"
                if action.status is ActionStatus.done
                else f"its status is {action.status.value}"
            )
            raise ApplianceError(
                f"action {action_id} cannot be undone: {why}", code="not_undoable", status=409
            )
        if action.undo is not None:
            self.retention.check_undo(action.undo)  # purged: why, before anyone presses
        return action

    def _undo_plan(self, requester: str, actions: list[ActionRow]) -> dict[str, Any]:
        evaluated = [self.evaluator.evaluate_undo(a, requester) for a in actions]
        summary = plan_summary(self.clients.display_name(requester), evaluated)
        return self._decide(PlanKind.undo, requester, evaluated, summary)

    def _decide(
        self,
        kind: PlanKind,
        requester: str,
        evaluated: list[Evaluated],
        summary: str,
        origin: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A plan is decided as a whole: any deny refuses it, any approve puts
        all of it behind one approval, otherwise it runs now."""
        plan_id = _id("plan")
        decisions = {e.decision.decision for e in evaluated}
        if "deny" in decisions:
            status = PlanStatus.denied
        elif "approve" in decisions:
            status = PlanStatus.pending_approval
        else:
            status = PlanStatus.running
        if status is not PlanStatus.denied and any(
            e.intent.verb in CHANGE_VERBS for e in evaluated
        ):
            # A full data partition refuses changes now (507), before anyone is
            # asked to press; the executor checks again when it runs.
            self.parts.storage.check_change("this plan")
        else:
            self.parts.storage.room_for_records()
        digest = plan_digest(plan_id, requester, [e.digest for e in evaluated])
        decided: dict[str, Any] = {
            "plan_id": plan_id,
            "kind": kind.value,
            "requester": requester,
            "digest": digest,
            "status": status.value,
            "intents": [e.decided(with_derived=kind is PlanKind.intents) for e in evaluated],
        }
        # Reads that run at once change nothing: their plan is recorded once,
        # as it ends (``plan.read``), not decision and action by action.
        read_only = status is PlanStatus.running and all(
            e.intent.verb in READ_VERBS for e in evaluated
        )
        if origin:
            decided["origin"] = origin
        with self._lock:
            approval = self._ask(
                kind, plan_id, requester, summary, digest, decided, status, evaluated
            )
            try:
                if not read_only:
                    # The decision is on the record before anything may act on it.
                    self.audit.append(
                        "plan.decided",
                        {**decided, "approval_id": approval.approval_id if approval else None},
                    )
                self.plans.insert(
                    plan_id=plan_id,
                    kind=kind,
                    requester=requester,
                    status=status,
                    digest=digest,
                    approval_id=approval.approval_id if approval else None,
                    code=approval.code if approval else None,
                    actions=[_new_action(e) for e in evaluated],
                    origin=origin,
                )
            except BaseException:
                if approval is not None:
                    self.approvals.cancel(approval.approval_id)
                raise
        if status is PlanStatus.running:
            self.executor.run_plan(plan_id, read_only=read_only)
        out = self.plans.public(plan_id)
        assert out is not None  # stored just above
        return out

    def _ask(
        self,
        kind: PlanKind,
        plan_id: str,
        requester: str,
        summary: str,
        digest: str,
        decided: dict[str, Any],
        status: PlanStatus,
        evaluated: list[Evaluated],
    ) -> ApprovalRequest | None:
        """Put a plan that needs a press on the panel (None when it needs none).

        A risky plan needs the owner's console to have shown it before a
        press counts (trusted arming); a plan the box's model proposed is
        not held against its requester when it is denied (lockouts)."""
        if status is not PlanStatus.pending_approval:
            return None
        # Privileged work needs the TPM (its receipt is signed there): if it
        # is gone or locked out, refuse now, before anyone presses.
        if self.keystore.tpm is not None:
            self.keystore.tpm.check()
        try:
            return self.approvals.submit(
                kind="undo" if kind is PlanKind.undo else "plan",
                subject_id=plan_id,
                requester=requester,
                summary=summary,
                digest=digest,
                console=needs_console(self.config.approvals, evaluated),
                counts=not decided.get("origin", {}).get("task_id"),
            )
        except ApplianceError as e:
            self.audit.append("plan.refused", {**decided, "reason": e.reason})
            raise

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
            self.pairing.decided(request)
            return
        plan_id = request.subject_id
        if request.status != "approved":
            self.plans.end_plan(
                plan_id,
                # Only a press denies; no answer (timeout, shutdown) expires.
                PlanStatus.denied if request.status == "denied" else PlanStatus.expired,
                f"approval {request.status}"
                + (f" ({request.decided_by})" if request.decided_by else ""),
            )
            return
        try:
            # What the press approved, signed by the device key: the audit log
            # can prove which press authorised which action.
            receipt = self.receipts.sign(request)
            self.audit.append("approval.receipt", receipt.to_dict())
        except ApplianceError as e:
            # No signed receipt (the TPM went away): the approval cannot be
            # proved, so nothing runs.
            self.plans.end_plan(
                plan_id, PlanStatus.failed, f"the approval could not be signed: {e.reason}"
            )
            self.audit.append_quietly(
                "plan.failed", {"plan_id": plan_id, "reason": e.reason, "code": e.code}
            )
            return
        threading.Thread(
            target=self.executor.run_plan, args=(plan_id,), daemon=True, name=f"plan-{plan_id}"
        ).start()

    # ------------------------------------------------------------------ the box
    def _agent(self) -> AgentClient:
        return AgentClient(
            self.config.agent_socket_path,
            agent_uid=self.config.agent_uid,
            timeout_s=self.config.agent_timeout_s,
        )

    def attestation(self, nonce: bytes) -> dict[str, Any]:
        """A TPM2_Quote over the sealing PCRs and a TPM2_Certify of the device
        key, both carrying the caller's nonce (``issuer.attestation.attest``)."""
        return attestation.attest(
            self.keystore.tpm, nonce, self.config.seal_pcrs, self.config.keys_dir, self.signer
        )

    def revoke_client(self, client_id: str) -> dict[str, Any]:
        """Revoke a desktop: its credential stops working, and nothing it asked
        for runs any more (its waiting approvals are withdrawn, its tasks end,
        and the executor refuses any action of a requester no longer paired)."""
        self.pairing.clients.revoke(client_id)
        withdrawn = self.approvals.cancel_requester(client_id, by="revoked")
        tasks = self.tasks.cancel_requester(client_id)
        self.audit.append(
            "client.revoked",
            {"client_id": client_id, "approvals_withdrawn": withdrawn, "tasks_ended": tasks},
        )
        return {"revoked": client_id, "approvals_withdrawn": withdrawn, "tasks_ended": tasks}

    def revoke_all_tokens(self) -> int:
        """Bump the epoch: every earlier boot statement and capability token is
        refused from now on; a new statement is signed."""
        epoch = self.chain.revoke_all()
        self.audit.append("tokens.revoked_all", {"epoch": epoch, "statement": self.statement})
        return epoch

    # ------------------------------------------------------------------ status
    def _update_fault(self) -> None:
        """The panel's fault light follows /healthz: on while nothing
        privileged can run (TPM gone or locked out, audit log closed)."""
        problems = self.health()["problems"]
        self.panel.set_fault("; ".join(problems) if problems else None)

    def health(self) -> dict[str, Any]:
        """What /healthz answers: whether privileged actions can run, and if not, why."""
        return state.health(self.parts, self.rollback)

    def status(self) -> dict[str, Any]:
        """The box's state for the CLI and the owner's console."""
        return state.status(self.parts)


def _new_action(e: Evaluated) -> NewAction:
    return NewAction(
        action_id=_id("act"),
        verb=e.intent.verb,
        resource=e.resource,
        params=e.params,
        provenance={k: v.value for k, v in e.intent.provenance.items()},
        intent_digest=e.digest,
        decision=e.decision.decision,
        risk=e.decision.risk,
        reasons=e.decision.reasons,
        undo_of=e.params.get("action_id") if e.intent.verb == UNDO_VERB else None,
    )


__all__ = ["Broker", "Parts"]
