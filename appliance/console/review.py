"""The request as the box renders it: everything a press would do, from the
box's own state, never from what the requester says about it.

:func:`review` is what the console's **Now** page shows and what
``GET /v1/approvals/{id}/review`` answers (one truth): the requester and its
grant, who proposed the plan (the box's model: its id, hash and the words it
was given, while the task is open; a plugin), every step with its verb,
source, destination, size, decision, risk and reasons, the fields derived
from file content or proposed by the model, the text a write would write
(and its diff against a file already there), counts per verb, the names
flagged that would not read as themselves, the verification code and the
digest. Nothing is summarised away: a plan of 256 steps is 256 steps.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections import Counter
from typing import Any

from appliance.broker.plans import ActionRow
from appliance.broker.service import Broker
from appliance.broker.summary import risky_kind
from appliance.console.looks import Budget, current_text, diff, look
from appliance.errors import NotFound
from appliance.names import BIDI_CONTROLS, ZERO_WIDTH, escaped, hidden, name_warnings
from appliance.verbs import UNDO_VERB, spec

TEXT_SHOWN = 64 * 1024  # characters of a write's text shown inline


def name(value: str) -> dict[str, Any]:
    """A resource as the console shows it: escaped, and its flags (each
    component checked on its own, so a Greek folder beside a Latin file is
    not "mixed")."""
    flags: list[str] = []
    for part in value.removeprefix("share:").split("/"):
        flags += [w for w in name_warnings(part) if w not in flags]
    return {"raw": value, "shown": escaped(value), "flags": flags}


def review(broker: Broker, approval: dict[str, Any]) -> dict[str, Any]:
    """The review of one approval request (its public view, as the caller
    may read it: ``broker.views.approval``)."""
    out: dict[str, Any] = {"approval": approval, "kind": approval["kind"]}
    if approval["kind"] == "pairing":
        out["pairing"] = _pairing(broker, approval["subject_id"])
        return out
    plan = broker.plans.plan_row(approval["subject_id"])
    if plan is None:
        raise NotFound(f"no plan {approval['subject_id']!r}")
    origin = _origin(broker, plan.origin)
    actions = broker.plans.actions(plan.plan_id)
    budget = Budget()
    steps = [_step(broker, a, origin.get("words"), budget) for a in actions]
    out |= {
        "plan_id": plan.plan_id,
        "plan_status": plan.status.value,
        "requester": requester(broker, plan.requester),
        "origin": origin,
        "counts": [{"verb": v, "n": n} for v, n in Counter(a.verb for a in actions).most_common()],
        "steps": steps,
        "risky": sum(1 for s in steps if s["tags"]),
        "flagged": sum(1 for s in steps if s["flags"]),
    }
    return out


def requester(broker: Broker, client_id: str) -> dict[str, Any]:
    record = broker.clients.get(client_id)
    if record is None:
        return {"client_id": client_id, "name": None, "flags": [], "grant": None}
    return {
        "client_id": client_id,
        "name": escaped(record.name),
        "flags": name_warnings(record.name),
        "grant": record.grant.describe(),
        "active": record.active,
    }


def _pairing(broker: Broker, ref: str) -> dict[str, Any]:
    row = broker.clients.pairing_request(ref)
    if row is None:
        raise NotFound(f"no pairing {ref!r}")
    return {
        "name": escaped(row["name"]),
        "flags": name_warnings(row["name"]),
        "address": row["address"],
        "grant": row["grant"].describe(),
        "owner": row["grant"].owner,
        "shares": row["grant"].to_json()["shares"],
    }


def _origin(broker: Broker, origin: dict[str, Any] | None) -> dict[str, Any]:
    if not origin:
        return {"kind": "desktop"}
    if origin.get("task_id"):
        task_id = origin["task_id"]
        row = broker.tasks.tasks.row(task_id)
        return {
            "kind": "model",
            "task_id": task_id,
            "model_id": origin.get("model_id"),
            "model_sha256": origin.get("model_sha256"),
            "words": broker.tasks.words(task_id),
            "words_sha256": row["text_sha256"] if row else None,
            "explanation": origin.get("explanation") or "",
            "confidence": origin.get("confidence"),
        }
    return {"kind": "plugin", "via": origin.get("via")}


def _step(broker: Broker, a: ActionRow, words: str | None, budget: Budget) -> dict[str, Any]:
    verb = a.verb
    params = dict(a.params)
    step: dict[str, Any] = {
        "index": a.idx + 1,
        "action_id": a.action_id,
        "verb": verb,
        "what": spec(verb).summary,
        "resource": name(a.resource),
        "to": None,
        "decision": a.decision,
        "risk": a.risk,
        "reasons": list(a.reasons),
        "status": a.status.value,
        "derived": sorted(f for f, p in a.provenance.items() if p == "content"),
        "proposed": sorted(f for f, p in a.provenance.items() if p == "model"),
        "notes": [],
        "looks": look(broker.shares, a.resource, budget),
        "to_looks": None,
        "undoes": _undoes(broker, params.get("action_id")) if verb == UNDO_VERB else None,
        "content": None,
        "diff": [],
    }
    to = params.get("to")
    if verb == "file.rename":
        to = a.resource.rsplit("/", 1)[0] + "/" + str(params.get("name"))
    if isinstance(to, str):
        step["to"] = name(to)
        step["to_looks"] = look(broker.shares, to, budget)
        if _share(to) != _share(a.resource):
            step["notes"].append(
                f"leaves the share {_share(a.resource)!r} for {_share(to)!r}: whoever may "
                f"read {_share(to)!r} will see it"
            )
    if verb == "file.write":
        step["content"] = _content(params)
        if step["looks"]["kind"] == "file":
            old = current_text(broker.shares, a.resource)
            new = step["content"]["text"]
            step["diff"] = diff(old, new, a.resource) if old is not None and new is not None else []
            step["notes"].append("a file of this name is there now: the diff shows what changes")
    step["tags"] = [t for t in [risky_kind(verb, step["derived"])] if t]
    if words is not None and not _named(a.resource, words):
        step["notes"].append("the task's words do not name this path")
    step["flags"] = step["resource"]["flags"] + (step["to"]["flags"] if step["to"] else [])
    step["params"] = {
        k: v for k, v in params.items() if k not in ("content", "to", "name", "action_id")
    }
    return step


def _content(params: dict[str, Any]) -> dict[str, Any]:
    raw = params.get("content", "")
    if params.get("encoding") == "base64":
        try:
            data = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            data = b""
    else:
        data = str(raw).encode()
    try:
        text: str | None = data.decode("utf-8") if b"\0" not in data else None
    except UnicodeDecodeError:
        text = None
    out: dict[str, Any] = {
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "encoding": params.get("encoding", "utf-8"),
        "text": text,
        "binary": text is None,
        "head_hex": data[:64].hex() if text is None else None,
    }
    if text is not None:
        flags = []
        if any(ch in BIDI_CONTROLS for ch in text):
            flags.append("bidirectional controls")
        if any(ch in ZERO_WIDTH for ch in text):
            flags.append("zero-width characters")
        if any(
            hidden(c) and c not in BIDI_CONTROLS and c not in ZERO_WIDTH and c not in "\n\t\r"
            for c in text
        ):
            flags.append("control characters")
        out["flags"] = flags
        out["shown"] = escaped(text[:TEXT_SHOWN], keep="\n\t")
        out["cut"] = max(0, len(text) - TEXT_SHOWN)
    return out


def _undoes(broker: Broker, action_id: object) -> dict[str, Any] | None:
    if not isinstance(action_id, str):
        return None
    original = broker.plans.action(action_id)
    if original is None:
        return None
    to = original.params.get("to") or original.params.get("name")
    return {
        "action_id": action_id,
        "plan_id": original.plan_id,
        "verb": original.verb,
        "resource": name(original.resource),
        "to": name(str(to)) if to else None,
    }


def _share(resource: str) -> str:
    return resource.removeprefix("share:").partition("/")[0]


def _named(resource: str, words: str) -> bool:
    """Do the task's words name this path (any folder or file name on it)?"""
    lowered = words.lower()
    parts = [p for p in resource.removeprefix("share:").split("/")[1:] if p]
    return any(p.lower() in lowered for p in parts)


def summary_line(review: dict[str, Any]) -> str:
    """One line for a list (the queue page): counts per verb and who asks."""
    if review["kind"] == "pairing":
        p = review["pairing"]
        return f"pairing {p['name']} at {p['address']}: {p['grant']}"
    counts = ", ".join(f"{c['n']} × {c['verb']}" for c in review["counts"])
    return f"{review['requester'].get('name') or review['requester']['client_id']}: {counts}"
