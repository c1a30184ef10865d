"""The policies' own test cases: a table of requests and the answers expected.

A cases file (``tests/cases.json`` inside a policy directory) looks like::

    {"cases": [
      {"name": "reading inside a share is allowed",
       "request": {"verb": "file.read", "requester": "alice", "share": "docs",
                   "path": "notes.txt", "is_dir": false},
       "expect": {"decision": "allow", "risk": "low", "rules": ["read-inside-share"]}}
    ]}

``request`` holds :class:`PolicyRequest` fields (``grant`` as a pairing's grant,
``{"shares": {"docs": "read-write"}, "audit": false}``); ``expect.rules`` is optional
and lists policy ids that must be among the deciding ones. The unit tests and
``python -m appliance.policy check`` run the same table, so an owner who edits
a policy can see at once which expectations changed.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.broker.grants import Grant
from appliance.errors import PolicyUnavailable
from appliance.policy.engine import RISKS, Decision, PolicyEngine, PolicyRequest

CASES_FILE = Path("tests") / "cases.json"
_REQUEST_FIELDS = {f.name for f in dataclasses.fields(PolicyRequest)}


@dataclass(frozen=True)
class Case:
    name: str
    request: PolicyRequest
    decision: str
    risk: str
    rules: tuple[str, ...] = ()


@dataclass(frozen=True)
class CaseResult:
    case: Case
    got: Decision

    @property
    def ok(self) -> bool:
        return (
            self.got.decision == self.case.decision
            and self.got.risk == self.case.risk
            and set(self.case.rules) <= set(self.got.rules)
        )

    def describe(self) -> str:
        """One line a person can read: what was expected and what came out."""
        want = f"{self.case.decision}/{self.case.risk}"
        if self.case.rules:
            want += f" via {', '.join(self.case.rules)}"
        got = f"{self.got.decision}/{self.got.risk}"
        if self.got.rules:
            got += f" via {', '.join(self.got.rules)}"
        mark = "ok  " if self.ok else "FAIL"
        return f"{mark} {self.case.name}: expected {want}, got {got}"


def load_cases(path: Path) -> list[Case]:
    """Read a cases file; a malformed one raises PolicyUnavailable naming the case."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PolicyUnavailable(f"cannot read policy cases {path}: {e}") from None
    cases = []
    for n, item in enumerate(raw.get("cases", []), start=1):
        cases.append(_case(n, item))
    return cases


def _case(n: int, item: dict[str, Any]) -> Case:
    name = item.get("name") or f"case {n}"
    req = dict(item.get("request", {}))
    unknown = set(req) - _REQUEST_FIELDS
    if unknown:
        raise PolicyUnavailable(f"policy case {name!r}: unknown request fields {sorted(unknown)}")
    req["derived_fields"] = tuple(req.get("derived_fields", ()))
    req["proposed_fields"] = tuple(req.get("proposed_fields", ()))
    if "grant" in req:
        # {"shares": {"docs": "read" | "read-write"}, "audit": bool, "owner": bool}
        req["grant"] = Grant.from_json(req["grant"])
    expect = item.get("expect", {})
    if (
        expect.get("decision") not in ("allow", "approve", "deny")
        or expect.get("risk") not in RISKS
    ):
        raise PolicyUnavailable(
            f"policy case {name!r}: expect needs decision allow/approve/deny "
            "and risk low/medium/high"
        )
    try:
        request = PolicyRequest(**req)
    except TypeError as e:
        raise PolicyUnavailable(f"policy case {name!r}: {e}") from None
    return Case(name, request, expect["decision"], expect["risk"], tuple(expect.get("rules", ())))


def run_cases(engine: PolicyEngine, cases: list[Case]) -> list[CaseResult]:
    """Decide every case; the caller checks ``.ok`` on each result."""
    return [CaseResult(c, engine.decide(c.request)) for c in cases]
