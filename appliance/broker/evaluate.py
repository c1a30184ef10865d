"""Evaluation: scope resolution and policy for one intent, and its digest.

Each intent is made canonical first (``share:NAME/path`` parsed lexically,
then walked from the share root with ``O_NOFOLLOW``, a destination too), so
the policy decides on exactly what the executor will act on. A scope refusal
becomes a ``deny`` with the reason. The intent's digest covers the verb, the
canonical resource and parameters, the provenance and the requester: it is
what the token, the approval and the audit log bind to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from appliance.broker.clients import ClientRecord, Clients
from appliance.broker.files.creating import write_data
from appliance.broker.plans import ActionRow
from appliance.broker.quota import ReadQuota
from appliance.broker.scope import Shares, Target
from appliance.errors import ExecutionError, ScopeError
from appliance.intents import Intent, digest
from appliance.policy import Decision, PolicyEngine, PolicyRequest
from appliance.verbs import UNDO_VERB, spec

NOT_PAIRED = "The requester is not paired any more (revoked, or its pairing ended)."


@dataclass(frozen=True)
class Evaluated:
    """One intent after scope resolution and policy."""

    intent: Intent
    resource: str  # canonical, or as given when resolution refused it
    params: dict[str, Any]  # canonical resource parameters
    decision: Decision
    digest: str

    def decided(self, *, with_derived: bool) -> dict[str, Any]:
        """How ``plan.decided`` records it."""
        return {
            "verb": self.intent.verb,
            "resource": self.resource,
            "intent_digest": self.digest,
            "decision": self.decision.decision,
            "risk": self.decision.risk,
            "reasons": list(self.decision.reasons),
            "derived_fields": self.intent.derived_fields() if with_derived else [],
        }


def intent_digest(
    verb: str, resource: str, params: dict[str, Any], provenance: dict[str, str], requester: str
) -> str:
    """The digest of one decided intent (what its token and its approval bind)."""
    return digest(
        {
            "verb": verb,
            "resource": resource,
            "params": params,
            "provenance": provenance,
            "requester": requester,
        }
    )


def plan_digest(plan_id: str, requester: str, intent_digests: list[str]) -> str:
    """The digest of a whole plan: the approval's digest and its verification code."""
    return digest({"plan_id": plan_id, "requester": requester, "intents": intent_digests})


class Evaluator:
    def __init__(
        self, shares: Shares, policy: PolicyEngine, clients: Clients, quota: ReadQuota
    ) -> None:
        self.shares = shares
        self.policy = policy
        self.clients = clients
        self.quota = quota

    def requester(self, requester: str) -> ClientRecord | None:
        """The requester as paired now; None when it is not (or no longer) paired."""
        record = self.clients.get(requester)
        return record if record is not None and record.active else None

    def evaluate(self, intent: Intent, requester: str) -> Evaluated:
        params = dict(intent.params)
        client = self.requester(requester)
        try:
            target, kind, to = self._resolve(intent, params)
        except ScopeError as e:
            decision = Decision("deny", "high", (e.reason,))
            resource = intent.resource
        else:
            resource = target.canonical
            decision = (
                Decision("deny", "high", (NOT_PAIRED,))
                if client is None
                else self.policy.decide(
                    PolicyRequest(
                        verb=intent.verb,
                        requester=requester,
                        share=target.share,
                        path="/".join(target.parts),
                        to_share=to.share if to else None,
                        to_path="/".join(to.parts) if to else None,
                        derived_fields=tuple(intent.derived_fields()),
                        is_dir=None if kind is None else kind == "dir",
                        proposed_fields=tuple(intent.proposed_fields()),
                        grant=client.grant,
                        name=client.name,
                    )
                )
            )
        if intent.verb == "file.read" and decision.decision != "deny":
            self.quota.take(requester, self._read_cost(resource, params))
        provenance = {k: v.value for k, v in intent.provenance.items()}
        return Evaluated(
            intent,
            resource,
            params,
            decision,
            intent_digest(intent.verb, resource, params, provenance, requester),
        )

    def _read_cost(self, resource: str, params: dict[str, Any]) -> int:
        """What a read may return, charged before it runs: its ``max_bytes``
        (at most the box's limit), no more than the file holds past ``offset``."""
        limit = self.shares.limits.read_bytes
        wanted = max(0, min(params.get("max_bytes", limit), limit))
        st = self.shares.lookup(self.shares.parse(resource))
        left = (st.st_size - max(0, params.get("offset", 0))) if st is not None else 0
        return min(wanted, max(0, left))

    def _resolve(
        self, intent: Intent, params: dict[str, Any]
    ) -> tuple[Target, str | None, Target | None]:
        """The canonical target, what it is now, and the destination;
        ``params`` gets canonical values."""
        target = self.shares.parse(intent.resource)
        kind = self.shares.inspect(target)
        to: Target | None = None
        for name in spec(intent.verb).resource_params:
            if name in params:
                to = self.shares.parse(params[name])
                self.shares.inspect(to)
                params[name] = to.canonical
        if intent.verb == "file.write":
            # What it would write, checked before anyone is asked to approve it.
            try:
                write_data(params, self.shares.limits.write_bytes)
            except ExecutionError as e:
                raise ScopeError(e.reason) from None
        if intent.verb == "file.rename":
            # The new name must be a valid name in the same directory.
            to = self.shares.parse(target.parent().child(params["name"]).canonical)
            self.shares.inspect(to)
        return target, kind, to

    def evaluate_undo(self, action: ActionRow, requester: str) -> Evaluated:
        """``action.undo`` of a done action: decided on the action's resource,
        under the requester's grant (it must be able to change that share)."""
        target = self.shares.parse(action.resource)
        client = self.requester(requester)
        decision = (
            Decision("deny", "high", (NOT_PAIRED,))
            if client is None
            else self.policy.decide(
                PolicyRequest(
                    verb=UNDO_VERB,
                    requester=requester,
                    share=target.share,
                    path="/".join(target.parts),
                    grant=client.grant,
                    name=client.name,
                )
            )
        )
        params = {"action_id": action.action_id}
        intent = Intent.model_construct(
            verb=UNDO_VERB, resource=action.resource, params=params, provenance={}
        )
        return Evaluated(
            intent,
            action.resource,
            params,
            decision,
            intent_digest(UNDO_VERB, action.resource, params, {}, requester),
        )

    def may_view(self, requester: str, what: str, record_id: str, *, mine: bool) -> bool:
        """May ``requester`` read a record (``what``: plan, task, approval,
        audit) through the API? ``mine``: it is the requester's own."""
        client = self.requester(requester)
        if client is None:
            return False
        decision = self.policy.decide(
            PolicyRequest(
                verb=f"view.{what}",
                requester=requester,
                share=None,
                path=record_id,
                grant=client.grant,
                name=client.name,
                mine=mine,
            )
        )
        return decision.decision == "allow"
