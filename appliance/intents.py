"""Intents: the only language in which anyone asks the broker to act.

A plan is a list of intents. Each names a verb, a resource written
``share:NAME/relative/path``, the verb's parameters, and the provenance of
each field: typed by the requester, or derived from content that was read
(a model quoting a file, a date found inside a PDF). The requester is never
taken from the body: the broker fills it in from the caller's credential.

``plan_schema()`` exports the JSON schema that clients and the model backends
validate against.
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from appliance.names import BIDI_CONTROLS, class_of
from appliance.verbs import INTENT_VERBS, READ_VERBS, REGISTRY, WRITE_VERBS, Param

# The verbs a plan may name, from the registry (appliance/verbs.py).
Verb = Literal[INTENT_VERBS]  # type: ignore[valid-type]

VERBS: tuple[str, ...] = INTENT_VERBS

__all__ = [
    "READ_VERBS",
    "VERBS",
    "WRITE_VERBS",
    "Intent",
    "Plan",
    "Provenance",
    "canonical_json",
    "digest",
    "plan_schema",
    "verification_code",
]


class Provenance(StrEnum):
    requester = "requester"  # typed by the paired client
    content = "content"  # derived from something that was read
    # Proposed by the box's model: its input includes file names, which anyone
    # who can write into a share chooses. The broker marks every field of a
    # task's plan so, whatever the model said about it.
    model = "model"


# Every number a verb takes is a count or a position in a file: at least 0 and
# at most 2**53 - 1, the largest integer every JSON reader holds exactly.
MAX_COUNT = 2**53 - 1
PATH_MAX = 4096  # characters of a resource (the broker also bounds its bytes)
# Characters no resource or name may hold: controls (C0, DEL, C1) and
# bidirectional controls, which make a name on the approval page read
# differently from what it is. The schema says so; the broker's scope rules
# (appliance.names.check_name) refuse such a plan, and the refusal is audited.
_NOT_IN_NAMES = frozenset(
    [chr(c) for c in (*range(0x20), *range(0x7F, 0xA0))] + sorted(BIDI_CONTROLS)
)
NAME_PATTERN = f"^{class_of(_NOT_IN_NAMES, negate=True)}*$"
# Parameters that name a file or a resource.
_NAMES = ("to", "name")

Resource = Annotated[
    str,
    StringConstraints(min_length=1, max_length=PATH_MAX),
    Field(json_schema_extra={"pattern": NAME_PATTERN}),
]


def _param_schema(name: str, param: Param) -> dict[str, Any]:
    if param.type is bool:
        return {"type": "boolean"}
    if param.type is int:
        return {"type": "integer", "minimum": 0, "maximum": MAX_COUNT}
    out: dict[str, Any] = {"type": "string"}
    if param.choices:
        out["enum"] = list(param.choices)
    if param.resource:
        out.update(minLength=1, maxLength=PATH_MAX, pattern=NAME_PATTERN)
    elif name in _NAMES:
        out.update(minLength=1, pattern=NAME_PATTERN)
    return out


def _per_verb() -> list[dict[str, Any]]:
    """For each verb: the parameters it takes, their types, which it needs,
    and which fields its provenance may name (only those it has)."""
    rules = []
    for verb in INTENT_VERBS:
        spec = REGISTRY[verb].params
        required = [n for n, p in spec.items() if p.required]
        params: dict[str, Any] = {
            "type": "object",
            "properties": {n: _param_schema(n, p) for n, p in spec.items()},
            "additionalProperties": False,
        }
        fields = ["resource", *(f"params.{n}" for n in spec)]
        then: dict[str, Any] = {
            "properties": {"params": params, "provenance": {"propertyNames": {"enum": fields}}}
        }
        if required:
            params["required"] = required
            then["required"] = ["params"]
        optional = [n for n in spec if n not in required]
        if optional:
            then["allOf"] = [
                {
                    "if": {
                        "properties": {"provenance": {"required": [f"params.{n}"]}},
                        "required": ["provenance"],
                    },
                    "then": {"properties": {"params": {"required": [n]}}, "required": ["params"]},
                }
                for n in optional
            ]
        rules.append(
            {"if": {"properties": {"verb": {"const": verb}}, "required": ["verb"]}, "then": then}
        )
    return rules


def _with_per_verb(schema: dict[str, Any]) -> None:
    schema["allOf"] = _per_verb()


def _not_unicode(value: str, where: str) -> str | None:
    """Why ``value`` is not text at all (None when it is): a lone surrogate
    is half of a UTF-16 pair, no character; nothing can encode it."""
    for i, ch in enumerate(value):
        if "\ud800" <= ch <= "\udfff":
            return f"{where} is not valid Unicode: a lone surrogate U+{ord(ch):04X} at {i}"
    return None


class Intent(BaseModel):
    """One action on one resource."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_with_per_verb)

    verb: Verb
    resource: Resource = Field(description="share:NAME/relative/path")
    params: dict[str, Any] = Field(default_factory=dict)
    provenance: dict[str, Provenance] = Field(
        default_factory=dict,
        description="Field name ('resource' or 'params.NAME') to where its value came from. "
        "Fields not named were typed by the requester.",
    )

    @model_validator(mode="after")
    def _check_params(self) -> Intent:
        problem = _not_unicode(self.resource, "resource")
        if problem:
            raise ValueError(problem)
        spec = REGISTRY[self.verb].params
        unknown = set(self.params) - set(spec)
        if unknown:
            raise ValueError(f"{self.verb} takes no parameter {sorted(unknown)}")
        for name, param in spec.items():
            if name not in self.params:
                if param.required:
                    raise ValueError(f"{self.verb} needs params.{name}")
                continue
            value = self.params[name]
            typ = param.type
            if typ is int and isinstance(value, float) and value.is_integer():
                # JSON has numbers, not integers: 164.0 is the integer 164.
                value = self.params[name] = int(value)
            # bool is an int in Python: refuse it where a number is meant.
            if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
                raise ValueError(f"params.{name} of {self.verb} must be {typ.__name__}")
            if param.choices and value not in param.choices:
                shown = " or ".join(repr(c) for c in param.choices)
                raise ValueError(f"params.{name} must be {shown}")
            if isinstance(value, int) and not 0 <= value <= MAX_COUNT:
                raise ValueError(f"params.{name} must be between 0 and {MAX_COUNT}")
            if isinstance(value, str):
                problem = _not_unicode(value, f"params.{name}")
                if problem:
                    raise ValueError(problem)
                if (param.resource or name in _NAMES) and not value:
                    raise ValueError(f"params.{name} cannot be empty")
                if param.resource and len(value) > PATH_MAX:
                    raise ValueError(f"params.{name} is over {PATH_MAX} characters")
        fields = {"resource"} | {f"params.{p}" for p in self.params}
        stray = set(self.provenance) - fields
        if stray:
            raise ValueError(f"provenance names fields the intent does not have: {sorted(stray)}")
        return self

    def derived_fields(self) -> list[str]:
        """Fields whose value came from read content."""
        return sorted(k for k, v in self.provenance.items() if v is Provenance.content)

    def proposed_fields(self) -> list[str]:
        """Fields the box's model proposed."""
        return sorted(k for k, v in self.provenance.items() if v is Provenance.model)

    def fields(self) -> list[str]:
        """Every field of the intent, as provenance names them."""
        return ["resource", *(f"params.{p}" for p in sorted(self.params))]


class Plan(BaseModel):
    """What a client submits to ``POST /v1/intents``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"intents": [{"verb": "file.read", "resource": "share:docs/Inbox/a.pdf"}]},
                {
                    "intents": [
                        {"verb": "file.list", "resource": "share:docs/Inbox"},
                        {
                            "verb": "file.move",
                            "resource": "share:docs/Inbox/a.pdf",
                            "params": {"to": "share:docs/2024/a.pdf"},
                        },
                    ]
                },
            ]
        },
    )

    intents: list[Intent] = Field(min_length=1, max_length=256)


def plan_schema() -> dict[str, Any]:
    """The JSON schema of a plan, for clients and model backends."""
    return Plan.model_json_schema()


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON bytes: the input of every digest."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest(value: Any) -> str:
    return hashlib.sha256(canonical_json(value)).hexdigest()


def verification_code(hex_digest: str) -> str:
    """A short code derived from a request digest, shown to the requester and
    on the panel so a person can match what they approve. Four digits 1-9 (no
    zero, so a single LED can blink each digit)."""
    raw = bytes.fromhex(hex_digest)
    return "".join(str(1 + b % 9) for b in raw[:4])
