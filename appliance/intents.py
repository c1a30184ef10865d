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

from appliance.verbs import INTENT_VERBS, READ_VERBS, REGISTRY, WRITE_VERBS

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


Resource = Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class Intent(BaseModel):
    """One action on one resource."""

    model_config = ConfigDict(extra="forbid")

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
            # bool is an int in Python: refuse it where a number is meant.
            if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
                raise ValueError(f"params.{name} of {self.verb} must be {typ.__name__}")
            if param.choices and value not in param.choices:
                shown = " or ".join(repr(c) for c in param.choices)
                raise ValueError(f"params.{name} must be {shown}")
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

    model_config = ConfigDict(extra="forbid")

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
