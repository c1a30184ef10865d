"""The executor: the only code that acts on the shares.

For each action of a decided plan, in order: the claims are built from the
stored, decided action (never from a token or a request), a capability token
is minted for exactly them, and :meth:`Executor.execute` then

1. checks that the requester is still paired (a revoked desktop's plan, even
   one already approved, never runs);
2. checks the chain of authority (the boot statement vouches for the token
   root, is not expired, is of the current epoch);
3. checks the approval's signed receipt (a plan that waited for a press runs
   only on its own, intact receipt, and only with tokens that cite it);
4. verifies the token against the claims and records it as spent, with the
   action marked running in the same transaction (a second use is a replay);
5. acts (a move, rename or delete stores its undo record before it changes
   anything; what an action keeps for its undo, a trash item or a snapshot,
   is admitted against the retention budget and recorded first), stores the
   result and the undo record;
6. appends ``action.done``.

Before the token is spent, a change is refused (507) while the data
partition is full (``storage.py``), and an undo whose kept item was purged
is refused with why (410, ``retention.py``). A failure stops the rest of the
plan; what ran stays undoable.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from appliance.approval.receipts import Receipt, ReceiptError, ReceiptStore
from appliance.audit import AuditLog
from appliance.broker.clients import Clients
from appliance.broker.files import FileOps, Kept, UndoRecord
from appliance.broker.plans import ActionRow, ActionStatus, PlanRow, PlanStatus, PlanStore
from appliance.broker.retention import Retention
from appliance.broker.scope import Shares
from appliance.broker.storage import Storage
from appliance.errors import ApplianceError, ExecutionError, NotFound
from appliance.intents import digest
from appliance.issuer.statement import BootChain
from appliance.issuer.tokens import Claims, TokenService
from appliance.verbs import REGISTRY, UNDO_VERB

log = logging.getLogger("appliance.broker")


class Executor:
    def __init__(
        self,
        *,
        clients: Clients,
        chain: BootChain,
        tokens: TokenService,
        shares: Shares,
        files: FileOps,
        plans: PlanStore,
        receipts: ReceiptStore,
        audit: AuditLog,
        retention: Retention,
        storage: Storage,
    ) -> None:
        self.clients = clients
        self.retention = retention
        self.storage = storage
        self.chain = chain
        self.tokens = tokens
        self.shares = shares
        self.files = files
        self.plans = plans
        self.receipts = receipts
        self.audit = audit

    def run_plan(self, plan_id: str, *, read_only: bool = False) -> None:
        """Run a plan's actions in order; a failure stops the rest.

        ``read_only``: a plan of reads policy allowed outright. It changes
        nothing, so it is recorded as one ``plan.read`` entry when it ends
        (who read what, each action's token and result digest), instead of an
        entry per action: a desktop that lists and reads all day costs the
        log a few hundred bytes per plan."""
        plan = self.plans.plan_row(plan_id)
        if plan is None:
            log.error("plan %s vanished before it could run", plan_id)
            return
        done: list[dict[str, Any]] = []
        if plan.status is not PlanStatus.running:
            self.plans.set_plan(plan_id, PlanStatus.running)
        failed: str | None = None
        receipt: Receipt | None = None
        for action in self.plans.actions(plan_id):
            if failed:
                self.plans.set_action(action.action_id, status=ActionStatus.skipped)
                continue
            try:
                receipt = receipt or self._receipt(plan)
                token = self.tokens.mint(claims(plan, action, receipt))
                if read_only:
                    result, token_id = self._execute(token, action.action_id)
                    done.append({"a": action.action_id, "t": token_id, "r": digest(result)})
                else:
                    self.execute(token, action.action_id)
                continue
            except ApplianceError as e:
                error = e.to_dict()
            except Exception as e:  # noqa: BLE001 - an executor bug must not leave the plan running
                log.exception("action %s crashed", action.action_id)
                error = {"code": "internal", "reason": f"internal error: {type(e).__name__}"}
            failed = f"{action.verb} {action.resource}: {error['reason']}"
            self.plans.set_action(
                action.action_id, status=ActionStatus.failed, result={"error": error}
            )
            if read_only:
                continue
            self.audit.append_quietly(
                "action.failed",
                {
                    "plan_id": plan_id,
                    "action_id": action.action_id,
                    "intent_digest": action.intent_digest,
                    "error": error,
                },
            )
        status = PlanStatus.failed if failed else PlanStatus.done
        self.plans.set_plan(plan_id, status, failed)
        if read_only:
            self._audit_reads(plan, status, failed, done)

    def _audit_reads(
        self, plan: PlanRow, status: PlanStatus, failed: str | None, done: list[dict[str, Any]]
    ) -> None:
        actions = self.plans.actions(plan.plan_id)
        verbs: dict[str, int] = {}
        for a in actions:
            verbs[a.verb] = verbs.get(a.verb, 0) + 1
        self.audit.append_quietly(
            "plan.read",
            {
                "plan_id": plan.plan_id,
                "requester": plan.requester,
                "digest": plan.digest,
                "status": status.value,
                "verbs": verbs,
                # Which files' content left the box's disk, by name; lists and
                # stats only by number.
                "read": sorted(a.resource for a in actions if a.verb == "file.read")[:64],
                "error": failed,
                # Each action, its spent token and its result's digest.
                "actions_sha256": digest(done),
            },
        )

    def _receipt(self, plan: PlanRow) -> Receipt | None:
        """An approved plan's own, intact, signed receipt (None: no approval)."""
        if plan.approval_id is None:
            return None
        try:
            return self.receipts.load(plan.approval_id, request_digest=plan.digest)
        except NotFound:
            raise ReceiptError(
                f"plan {plan.plan_id} has no signed receipt for its approval"
            ) from None

    def _verify_and_act(
        self, token: str, action_id: str
    ) -> tuple[ActionRow, Claims, str, dict[str, Any], str | None]:
        """Check everything, spend the token, act, store the outcome."""
        action = self.plans.action(action_id)
        if action is None:
            raise NotFound(f"no action {action_id!r}")
        if action.decision == "deny":
            raise ExecutionError("a denied intent never runs", code="denied", status=403)
        plan = self.plans.plan_row(action.plan_id)
        if plan is None:
            raise ExecutionError("the action's plan is gone", code="not_found", status=404)
        client = self.clients.get(plan.requester)
        if client is None or not client.active:
            raise ExecutionError(
                f"{plan.requester} is not paired any more (revoked, or its pairing ended); "
                "nothing it asked for runs",
                code="requester_revoked",
                status=403,
            )
        self.chain.check()
        expected = claims(plan, action, self._receipt(plan))
        self._check_room(action)

        def running(conn: sqlite3.Connection, token_id: str) -> None:
            # Spent and "running" land together: after a crash, an action whose
            # token is spent is known to have maybe begun.
            self.plans.mark_running(conn, action_id, token_id)

        verified = self.tokens.verify_and_spend(token, expected, on_spend=running)
        try:
            result, snapshot_id, undo = self._act(action)
        except ApplianceError:
            # Nothing took effect (a file action rolls back before it raises):
            # what it may have recorded as kept is not needed.
            self.retention.release(action_id, "the action failed")
            raise
        self.plans.set_action(
            action_id,
            status=ActionStatus.done,
            result=result,
            snapshot_id=snapshot_id,
            undo=undo,
        )
        return action, expected, verified.token_id, result, snapshot_id

    def _execute(self, token: str, action_id: str) -> tuple[dict[str, Any], str]:
        """Execute a read without its own audit entry (its plan's ``plan.read``
        records it); the result and the spent token's id."""
        action, _, token_id, result, _ = self._verify_and_act(token, action_id)
        return result, token_id

    def execute(self, token: str, action_id: str) -> dict[str, Any]:
        """Verify the capability for ``action_id``, spend it, act, audit.

        The expected claims are rebuilt from the stored action, so a token
        for anything else (another action, resource, requester, approval or
        receipt) is refused and stays unspent."""
        action, expected, token_id, result, snapshot_id = self._verify_and_act(token, action_id)
        self.audit.append(
            "action.done",
            {
                "plan_id": action.plan_id,
                "action_id": action_id,
                "verb": action.verb,
                "resource": action.resource,
                "intent_digest": action.intent_digest,
                "token_id": token_id,
                "approval_id": expected.approval_id,
                "receipt_digest": expected.receipt_digest,
                "snapshot_id": snapshot_id,
                "result": audited(result),
            },
        )
        return result

    def _check_room(self, action: ActionRow) -> None:
        """Before the token is spent: no change on a full disk, and no undo
        of an action whose kept item was purged (both say why)."""
        if not REGISTRY[action.verb].changes:
            return
        self.storage.check_change(f"{action.verb} {action.resource}")
        if action.verb == UNDO_VERB:
            original = self.plans.action(str(action.params.get("action_id", "")))
            if original is not None and original.undo is not None:
                self.retention.check_undo(original.undo)

    def _keeper(self, action_id: str) -> _Keeper:
        return _Keeper(self.retention, action_id)

    def _act(self, action: ActionRow) -> tuple[dict[str, Any], str | None, UndoRecord | None]:
        """Do the action; its result, the snapshot it took, how to undo it."""
        if action.verb == UNDO_VERB:
            original = self.plans.action(action.params["action_id"])
            if original is None or original.undone_by or original.undo is None:
                raise ExecutionError("the action is gone or already undone", code="not_undoable")
            self.retention.check_undo(original.undo)
            result = self.files.undo(original.undo, keeper=self._keeper(action.action_id))
            self.retention.restored(original.undo)
            self.plans.set_action(
                original.action_id, undone_by=action.action_id, status=ActionStatus.undone
            )
            # Undoing a write or copy puts the file in the trash (or the store).
            return result, result.get("snapshot_id"), None
        # Parsed again from the stored, canonical form; the file actions walk
        # the path with O_NOFOLLOW themselves when they act.
        params: dict[str, Any] = dict(action.params)
        if "to" in params:
            params["to"] = self.shares.parse(params["to"])

        def record(snapshot_id: str | None, undo: UndoRecord) -> None:
            # How to undo it is on record before the change begins.
            self.plans.set_action(action.action_id, snapshot_id=snapshot_id, undo=undo)

        outcome = self.files.execute(
            action.verb,
            self.shares.parse(action.resource),
            params,
            before_change=record,
            keeper=self._keeper(action.action_id),
        )
        return outcome.result, outcome.snapshot_id, outcome.undo


class _Keeper:
    """What one action keeps, admitted against the budget and recorded under
    its id (files.Keeper)."""

    def __init__(self, retention: Retention, action_id: str) -> None:
        self.retention = retention
        self.action_id = action_id

    def admit(self, size: int, what: str) -> None:
        self.retention.admit(size, what)

    def kept(self, kept: Kept) -> None:
        self.retention.keep(self.action_id, kept)


def claims(plan: PlanRow, action: ActionRow, receipt: Receipt | None) -> Claims:
    """What a token for ``action`` must say: the stored, decided action, its
    plan's requester and approval, and the approval's signed receipt."""
    return Claims(
        action_id=action.action_id,
        verb=action.verb,
        resource=action.resource,
        intent_digest=action.intent_digest,
        requester=plan.requester,
        approval_id=plan.approval_id,
        receipt_digest=receipt.receipt_digest if receipt else None,
    )


def audited(result: dict[str, Any]) -> dict[str, Any]:
    """Results go to the audit log without file contents: a hash stands in."""
    if "content" not in result:
        return result
    out = dict(result)
    out["content_sha256"] = digest(out.pop("content"))
    return out
