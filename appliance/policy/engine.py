"""The policy engine: Cedar policies decide allow, needs approval, or deny.

Cedar answers yes or no. The appliance needs three answers, so it asks the
same question twice in one batch: once with ``context.approved == false``
("may this run right away?") and once with ``context.approved == true`` ("may
it run once a person presses the button?"). Yes to the first is *allow*, yes
only to the second is *approve*, no to both is *deny*. Cedar's own rules give
the rest: nothing is allowed unless a ``permit`` matches, and a ``forbid``
always beats a ``permit``.

Every policy carries ``@id``, ``@reason`` and ``@risk`` annotations. The
engine names each policy by its ``@id`` so Cedar's diagnostics (the policies
that determined the answer) map straight to the human reasons and risk levels
shown to the requester and written to the audit log.

Fail closed: a missing, unreadable, unparsable or schema-invalid policy
directory makes :meth:`PolicyEngine.load` raise :class:`PolicyUnavailable`,
and any error while evaluating a request (which Cedar would otherwise report
as "this policy was skipped") makes :meth:`PolicyEngine.decide` raise it too;
neither ever turns into an allow.

Guards are built into the engine, below any policy an owner can edit,
because the threat model depends on them: file requests outside every share
are denied; a requester's grant bounds what it may read and change; a
desktop reading the API sees only its own records unless its grant says
otherwise; a change with any field derived from read content is never
allowed without approval; and a change the box's model proposed is allowed
without approval only by a rule that says so (``@model_proposals("allowed")``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cedarpy

from appliance.broker.grants import Grant
from appliance.errors import PolicyUnavailable
from appliance.verbs import (
    CHANGE_VERBS,
    FILE_VERBS,
    GROUPS,
    KNOWN_VERBS,
    NET_VERB,
    PAIR_VERB,
    UNDO_VERB,
    VIEW_VERBS,
    Group,
    spec,
)

DecisionKind = Literal["allow", "approve", "deny"]
Risk = Literal["low", "medium", "high"]

RISKS: tuple[Risk, ...] = ("low", "medium", "high")  # in increasing order
# The verb sets come from the registry (appliance/verbs.py): FILE_VERBS have a
# file or folder as their resource; the derived-content guard applies to
# CHANGE_VERBS.
__all__ = [
    "CHANGE_VERBS",
    "FILE_VERBS",
    "KNOWN_VERBS",
    "NET_VERB",
    "PAIR_VERB",
    "UNDO_VERB",
    "Decision",
    "PolicyEngine",
    "PolicyRequest",
]

SCHEMA_FILE = "schema.cedarschema"
POLICY_GLOB = "*.cedar"
REQUIRED_ANNOTATIONS = ("id", "reason", "risk")

DEFAULT_DENY_REASON = "No policy allows this."
GUARD_OUTSIDE = "The appliance never acts outside its shares (built-in rule)."
GUARD_DERIVED = (
    "Details of this change came from content the model read; the appliance never "
    "makes such a change without a person's approval (built-in rule)."
)
GUARD_MODEL = (
    "The box's model proposed this change (its input includes file names anyone with "
    "a share can write); no rule lets such a change run without a press (built-in rule)."
)
GUARD_VIEW = "A desktop sees only its own plans, tasks and approvals (built-in rule)."
MODEL_ANNOTATION = "model_proposals"


@dataclass(frozen=True)
class PolicyRequest:
    """One question to the policy: may ``requester`` do ``verb`` on ``share``/``path``?

    ``share`` is None when the resource is outside every share. ``path`` is the
    path inside the share. ``to_share``/``to_path`` name a copy's or move's
    destination: ``to_path`` set with ``to_share`` None means the destination
    is outside every share; both None means the verb has no destination.
    ``derived_fields`` names fields whose value came from read content
    ("resource", "params.to", ...). ``is_dir`` says whether the resource is a
    folder; None (unknown) is treated as a folder, the careful choice.
    """

    verb: str
    requester: str
    share: str | None
    path: str
    to_share: str | None = None
    to_path: str | None = None
    derived_fields: tuple[str, ...] = ()
    is_dir: bool | None = None
    # Fields the box's model proposed (a task's plan): every field of it.
    proposed_fields: tuple[str, ...] = ()
    # The requester's grant and name. None: no grant applies (a policy test
    # case, an unpaired device asking to pair); the broker always gives one.
    grant: Grant | None = None
    name: str = ""
    # A read of the API (view.*): is the record the requester's own?
    mine: bool = False
    # A plugin's web request (net.request): did its run read file content first?
    after_read: bool = False


@dataclass(frozen=True)
class Decision:
    """The policy's answer, with the reasons a person reads and the risk level.

    ``rules`` holds the ``@id`` of each policy that determined the answer (for
    the audit log); built-in guards and the default deny add no id.
    """

    decision: DecisionKind
    risk: Risk
    reasons: tuple[str, ...]
    rules: tuple[str, ...] = ()


@dataclass(frozen=True)
class PolicyRule:
    """One loaded policy: its name, effect and annotations, and where it came from."""

    id: str
    effect: Literal["permit", "forbid"]
    reason: str
    risk: Risk
    source: str
    # The rule lets a change the box's model proposed run without a press.
    model_proposals: bool = False


def _max_risk(risks: list[Risk]) -> Risk:
    return max(risks, key=RISKS.index)


class PolicyEngine:
    """Decides requests against a loaded, schema-checked Cedar policy set."""

    def __init__(
        self,
        policies: cedarpy.PolicySet,
        schema: cedarpy.Schema,
        rules: dict[str, PolicyRule],
        directory: Path,
    ) -> None:
        self._policies = policies
        self._schema = schema
        self._rules = dict(rules)
        self.directory = directory

    @property
    def rules(self) -> tuple[PolicyRule, ...]:
        """The loaded policies, in file and source order."""
        return tuple(self._rules.values())

    # -- loading -----------------------------------------------------------

    @classmethod
    def load(cls, directory: Path) -> PolicyEngine:
        """Load every ``*.cedar`` file in ``directory`` and its ``schema.cedarschema``.

        Raises :class:`PolicyUnavailable` with a reason naming the file if the
        directory, the schema or any policy is missing, unreadable, does not
        parse, lacks its ``@id``/``@reason``/``@risk`` annotations, reuses an
        ``@id``, or does not validate against the schema.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise PolicyUnavailable(f"policy directory {directory} does not exist")
        schema_path = directory / SCHEMA_FILE
        schema_text = _read(schema_path)
        try:
            schema = cedarpy.Schema.from_str(schema_text)
        except ValueError as e:
            raise PolicyUnavailable(f"{schema_path.name} does not parse: {e}") from None

        files = sorted(p for p in directory.glob(POLICY_GLOB) if p.is_file())
        if not files:
            raise PolicyUnavailable(f"no policy files ({POLICY_GLOB}) in {directory}")

        rules: dict[str, PolicyRule] = {}
        static: dict[str, Any] = {}
        for path in files:
            text = _read(path)
            for rule, est in _parse_file(path, text):
                if rule.id in rules:
                    raise PolicyUnavailable(
                        f"{path.name}: policy id {rule.id!r} is already used in "
                        f"{rules[rule.id].source}"
                    )
                rules[rule.id] = rule
                static[rule.id] = est
            _validate(path, text, schema)
        if not rules:
            raise PolicyUnavailable(f"the policy files in {directory} contain no policies")
        _check_registry(schema)

        try:
            # Built from the JSON form so each policy's Cedar id is its @id:
            # diagnostics then name rules directly.
            policies = cedarpy.PolicySet.from_json_str(
                json.dumps({"staticPolicies": static, "templates": {}, "templateLinks": []})
            )
        except ValueError as e:
            raise PolicyUnavailable(f"policies could not be assembled: {e}") from None
        return cls(policies, schema, rules, directory)

    # -- deciding ----------------------------------------------------------

    def decide(self, req: PolicyRequest) -> Decision:
        """Answer allow, approve or deny for ``req``; raise PolicyUnavailable on any error."""
        if req.verb not in KNOWN_VERBS:
            return Decision(
                "deny", "high", (f"{req.verb!r} is not an action the appliance knows.",)
            )
        requests, entities = self._cedar_requests(req)
        try:
            direct, approved = cedarpy.is_authorized_batch(
                requests, self._policies, entities, schema=self._schema
            )
        except Exception as e:  # any failure inside the engine: fail closed
            raise PolicyUnavailable(f"policy evaluation failed: {e}") from None
        for result in (direct, approved):
            # Cedar skips a policy that errors and decides without it; a
            # skipped forbid could turn into an allow, so an error stops here.
            if result.diagnostics.errors:
                raise PolicyUnavailable(
                    "policy evaluation failed: " + "; ".join(map(str, result.diagnostics.errors))
                )
            if result.decision not in (cedarpy.Decision.Allow, cedarpy.Decision.Deny):
                raise PolicyUnavailable(f"policy evaluation gave no decision ({result.decision})")

        if direct.allowed and approved.allowed:
            kind: DecisionKind = "allow"
            ids = list(direct.diagnostics.reasons)
        elif approved.allowed:
            # Why not right away (the forbids, if any), then why with approval.
            kind = "approve"
            ids = list(direct.diagnostics.reasons) + list(approved.diagnostics.reasons)
        else:
            kind = "deny"
            ids = list(approved.diagnostics.reasons)
        return self._guard(req, self._decision(kind, ids))

    def _decision(self, kind: DecisionKind, ids: list[str]) -> Decision:
        ordered = list(dict.fromkeys(ids))  # unique, first-seen order
        try:
            rules = [self._rules[i] for i in ordered]
        except KeyError as e:
            raise PolicyUnavailable(f"policy engine named an unknown policy {e}") from None
        if not rules:
            # Only a deny can have no determining policy: nothing permitted it.
            return Decision("deny", "high", (DEFAULT_DENY_REASON,))
        return Decision(
            kind,
            _max_risk([r.risk for r in rules]),
            tuple(dict.fromkeys(r.reason for r in rules)),
            tuple(ordered),
        )

    def _guard(self, req: PolicyRequest, d: Decision) -> Decision:
        """Built-in floors no policy file can lower (they only ever tighten)."""
        if req.verb in VIEW_VERBS:
            sees_all = req.grant is not None and req.grant.sees_all
            if d.decision != "allow" or not (req.mine or sees_all):
                return Decision(
                    "deny", "high", (GUARD_VIEW,) if d.decision == "allow" else d.reasons
                )
            return d
        if req.verb in FILE_VERBS:
            outside = req.share is None or (req.to_path is not None and req.to_share is None)
            if outside and d.decision != "deny":
                return Decision("deny", "high", (GUARD_OUTSIDE,))
            refused = _beyond_grant(req)
            if refused and d.decision != "deny":
                return Decision("deny", "high", (refused,))
        if req.verb in CHANGE_VERBS and req.derived_fields and d.decision == "allow":
            return Decision("approve", "high", (GUARD_DERIVED, *d.reasons), d.rules)
        if req.verb in CHANGE_VERBS and req.proposed_fields and d.decision == "allow":
            permits = [self._rules[r] for r in d.rules if r in self._rules]
            if not permits or not all(r.model_proposals for r in permits):
                return Decision("approve", "high", (GUARD_MODEL, *d.reasons), d.rules)
        return d

    @staticmethod
    def _cedar_requests(req: PolicyRequest) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The two Cedar requests (without and with approval) and their entities."""
        principal = {"type": "Requester", "id": req.requester}
        grant = req.grant or Grant()
        requester = {"uid": principal, "attrs": grant.principal(req.name), "parents": []}
        entities, base = PolicyEngine._resource(req)
        action = {"type": "Action", "id": req.verb}
        requests = [
            {
                "principal": principal,
                "action": action,
                "resource": entities[0]["uid"],
                "context": {**base, "approved": approved},
            }
            for approved in (False, True)
        ]
        return requests, [requester, *entities]

    @staticmethod
    def _resource(req: PolicyRequest) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The resource entity (first) with its parents, and the request's context."""
        if req.verb in VIEW_VERBS:
            resource = {"type": "Record", "id": req.path}
            return [{"uid": resource, "attrs": {}, "parents": []}], {"mine": req.mine}
        if req.verb == PAIR_VERB:
            return [{"uid": {"type": "Appliance", "id": "this"}, "attrs": {}, "parents": []}], {}
        if req.verb == NET_VERB:
            host = {"uid": {"type": "Host", "id": req.path}, "attrs": {}, "parents": []}
            return [host], {"host": req.path, "after_read": req.after_read}
        if req.share is not None:
            share = {"type": "Share", "id": req.share}
            file = {"type": "File", "id": f"share:{req.share}/{req.path}"}
            entities: list[dict[str, Any]] = [
                {"uid": file, "attrs": {}, "parents": [share]},
                {"uid": share, "attrs": {}, "parents": []},
            ]
        else:
            entities = [{"uid": {"type": "File", "id": req.path}, "attrs": {}, "parents": []}]
        return entities, {
            "in_share": req.share is not None,
            "share": req.share or "",
            "path": req.path,
            "is_dir": req.is_dir is not False,
            "has_destination": req.to_path is not None or req.to_share is not None,
            "to_in_share": req.to_share is not None,
            "to_share": req.to_share or "",
            "to_path": req.to_path or "",
            "derived_fields": sorted(set(req.derived_fields)),
            "proposed_fields": sorted(set(req.proposed_fields)),
        }


def _beyond_grant(req: PolicyRequest) -> str | None:
    """Why a file request is beyond the requester's grant, or None. A copy
    reads its source and changes its destination; every other change changes
    its own share (and a move its destination too)."""
    grant = req.grant
    if grant is None:
        return None
    if not grant.reads(req.share):
        return f"This desktop's grant does not include the share {req.share!r}."
    if req.verb not in CHANGE_VERBS:
        return None
    changed = [req.to_share] if req.verb == "file.copy" else [req.share, req.to_share]
    for share in changed:
        if share is not None and not grant.writes(share):
            return f"This desktop's grant lets it read the share {share!r}, not change it."
    return None


def _check_registry(schema: cedarpy.Schema) -> None:
    """The schema must declare every verb of the registry (appliance/verbs.py)
    in the action group the registry gives it, so a rule written for
    ``Action::"change"`` covers exactly the verbs that change files.

    Asked of Cedar itself: one probe rule per group, one request per verb."""
    probe = cedarpy.PolicySet.from_json_str(
        json.dumps(
            {
                "staticPolicies": {
                    group.value: {
                        "effect": "permit",
                        "principal": {"op": "All"},
                        "action": {"op": "in", "entity": {"type": "Action", "id": group.value}},
                        "resource": {"op": "All"},
                        "conditions": [],
                    }
                    for group in GROUPS
                },
                "templates": {},
                "templateLinks": [],
            }
        )
    )
    for verb in sorted(KNOWN_VERBS):
        requests, entities = PolicyEngine._cedar_requests(
            PolicyRequest(verb=verb, requester="probe", share="probe", path="probe")
        )
        try:
            (result,) = cedarpy.is_authorized_batch(requests[:1], probe, entities, schema=schema)
        except Exception as e:  # noqa: BLE001 - the schema cannot take this verb
            raise PolicyUnavailable(f"{SCHEMA_FILE} cannot check {verb}: {e}") from None
        if result.diagnostics.errors:
            raise PolicyUnavailable(
                f"{SCHEMA_FILE} does not declare the action {verb!r} as the appliance uses it: "
                + "; ".join(map(str, result.diagnostics.errors))
            )
        found = set(result.diagnostics.reasons)
        wanted = {spec(verb).group.value} - {Group.none.value}
        if found != wanted:
            raise PolicyUnavailable(
                f"{SCHEMA_FILE} puts {verb!r} in the action group(s) {sorted(found) or 'none'}, "
                f"but the appliance treats it as {sorted(wanted) or 'none'}"
            )


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyUnavailable(f"{path.name} is missing from {path.parent}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyUnavailable(f"{path.name} cannot be read: {e}") from None


def _parse_file(path: Path, text: str) -> list[tuple[PolicyRule, dict[str, Any]]]:
    """Parse one policy file into rules and their Cedar JSON form."""
    try:
        est = json.loads(cedarpy.policies_to_json_str(text))
    except ValueError as e:
        raise PolicyUnavailable(f"{path.name} does not parse: {e}") from None
    if est.get("templates"):
        raise PolicyUnavailable(f"{path.name}: policy templates are not supported")
    out = []
    # Cedar numbers policies policy0, policy1... in source order.
    items = sorted(est.get("staticPolicies", {}).items(), key=lambda kv: _position(kv[0]))
    for n, (_, policy) in enumerate(items, start=1):
        ann = policy.get("annotations", {})
        missing = [a for a in REQUIRED_ANNOTATIONS if not ann.get(a)]
        if missing:
            label = f"policy {ann['id']!r}" if ann.get("id") else f"policy number {n}"
            raise PolicyUnavailable(
                f"{path.name}: {label} needs "
                + ", ".join(f'@{a}("...")' for a in missing)
                + " annotations"
            )
        if ann["risk"] not in RISKS:
            raise PolicyUnavailable(
                f"{path.name}: policy {ann['id']!r} has @risk({ann['risk']!r}); "
                "use low, medium or high"
            )
        model = ann.get(MODEL_ANNOTATION)
        if model not in (None, "allowed"):
            raise PolicyUnavailable(
                f"{path.name}: policy {ann['id']!r} has @{MODEL_ANNOTATION}({model!r}); "
                'the only value is "allowed"'
            )
        rule = PolicyRule(
            ann["id"], policy["effect"], ann["reason"], ann["risk"], path.name, model == "allowed"
        )
        out.append((rule, policy))
    return out


def _position(cedar_id: str) -> int:
    digits = cedar_id.removeprefix("policy")
    return int(digits) if digits.isdigit() else 0


def _validate(path: Path, text: str, schema: cedarpy.Schema) -> None:
    """Type-check a file against the schema, so a misspelt attribute is caught now."""
    try:
        result = cedarpy.validate_policies(text, schema)
    except ValueError as e:
        raise PolicyUnavailable(f"{path.name} cannot be validated: {e}") from None
    if not result.validation_passed:
        names = result.id_annotations_by_policy_id
        problems = [
            f"policy {names.get(e.policy_id, e.policy_id)!r}: {e.error}" if e.policy_id else e.error
            for e in result.errors[:5]
        ]
        raise PolicyUnavailable(f"{path.name} does not match {SCHEMA_FILE}: " + "; ".join(problems))
