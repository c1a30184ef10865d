"""The intent models, their schema, digests and verification codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from appliance.intents import Intent, Plan, digest, plan_schema, verification_code

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "docs" / "plan.schema.json"


def test_published_schema_is_current() -> None:
    # Desktop clients and model backends validate against this file.
    assert json.loads(SCHEMA_FILE.read_text()) == plan_schema()


@pytest.mark.parametrize(
    "intent",
    [
        {"verb": "file.move", "resource": "share:d/a"},  # needs params.to
        {"verb": "file.rename", "resource": "share:d/a", "params": {"to": "share:d/b"}},
        {"verb": "file.read", "resource": "share:d/a", "params": {"max_bytes": True}},
        {"verb": "file.write", "resource": "share:d/a", "params": {"content": 5}},
        {
            "verb": "file.write",
            "resource": "share:d/a",
            "params": {"content": "x", "encoding": "latin-1"},
        },
        {"verb": "file.read", "resource": "share:d/a", "provenance": {"params.to": "content"}},
        {"verb": "file.read", "resource": "share:d/a", "requester": "someone-else"},
        {"verb": "file.read", "resource": ""},
    ],
)
def test_invalid_intents_refused(intent: dict) -> None:
    with pytest.raises(ValidationError):
        Intent.model_validate(intent)


def test_derived_fields_and_plan_bounds() -> None:
    intent = Intent.model_validate(
        {
            "verb": "file.move",
            "resource": "share:d/a",
            "params": {"to": "share:d/b"},
            "provenance": {"params.to": "content", "resource": "requester"},
        }
    )
    assert intent.derived_fields() == ["params.to"]
    with pytest.raises(ValidationError):
        Plan.model_validate({"intents": []})


def test_digest_is_canonical_and_code_is_derived() -> None:
    a = digest({"b": 1, "a": [1, "é"]})
    assert a == digest({"a": [1, "é"], "b": 1})
    assert a != digest({"a": [1, "e"], "b": 1})
    code = verification_code(a)
    assert len(code) == 4 and set(code) <= set("123456789")
    assert code == verification_code(a)
