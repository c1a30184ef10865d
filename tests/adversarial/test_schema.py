"""What the OpenAPI document promises and what the box does agree: a request
the schema allows is never refused as malformed, and one it forbids is never
taken. Random requests, checked both ways (the schema with jsonschema_rs, as
schemathesis does; the box with its own validators)."""

from __future__ import annotations

import re
from typing import Any

import jsonschema_rs
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from appliance.api.routes.tasks import TaskRequest
from appliance.intents import Intent, plan_schema
from appliance.names import check_client_name, client_name_pattern, name_warnings, shown
from appliance.verbs import INTENT_VERBS, REGISTRY

# Text without lone surrogates (the edge refuses those before any schema),
# with controls, format characters and spaces in good measure.
TEXT = st.text(
    st.one_of(
        st.characters(exclude_categories=("Cs",)),
        st.sampled_from("\x00\x1f\x7f\x85\u00a0\u200b\u200d\u202e\u2028\u3000\ufeff \t"),
    ),
    max_size=12,
)
PARAM_NAMES = sorted({n for v in INTENT_VERBS for n in REGISTRY[v].params} | {"x"})
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT.filter(lambda t: not re.search("[\x00-\x1f\x7f-\x9f\u202e]", t)),
    st.sampled_from(["utf-8", "base64", "share:docs/b", ""]),
)


NAME_PATTERN = client_name_pattern()  # built once (it scans every code point)


@given(TEXT)
@settings(max_examples=500)
def test_the_pairing_name_pattern_is_the_pairing_name_rule(name: str) -> None:
    try:
        check_client_name(name)
        allowed = True
    except ValueError:
        allowed = False
    documented = re.fullmatch(NAME_PATTERN, name) is not None and len(name) <= 64
    assert documented == allowed, repr(name)


@given(TEXT)
@settings(max_examples=300)
def test_the_task_text_pattern_is_the_brokers_rule(text: str) -> None:
    pattern = TaskRequest.model_json_schema()["properties"]["text"]["pattern"]
    assert (re.search(pattern, text) is not None) == bool(text.strip()), repr(text)


INTENT_SCHEMA = jsonschema_rs.validator_for(
    {**plan_schema()["$defs"]["Intent"], "$defs": plan_schema()["$defs"]}
)


@given(
    verb=st.sampled_from(INTENT_VERBS),
    params=st.dictionaries(st.sampled_from(PARAM_NAMES), VALUES, max_size=3),
    provenance=st.dictionaries(
        st.sampled_from(["resource", *(f"params.{n}" for n in PARAM_NAMES)]),
        st.sampled_from(["requester", "content"]),
        max_size=2,
    ),
)
@settings(max_examples=1500)
def test_the_intent_schema_is_the_intent_rule(
    verb: str, params: dict[str, Any], provenance: dict[str, str]
) -> None:
    intent = {
        "verb": verb,
        "resource": "share:docs/a",
        "params": params,
        "provenance": provenance,
    }
    try:
        Intent.model_validate(intent)
        allowed = True
    except ValidationError:
        allowed = False
    assert INTENT_SCHEMA.is_valid(intent) == allowed, intent


def test_names_are_shown_safely() -> None:
    assert shown("laptop") == "laptop"
    assert shown("Ünïcødé 日本語 한국어") == "Ünïcødé 日本語 한국어"  # scripts used together
    assert shown("Ωmega") == "Ωmega [mixed scripts: Greek+Latin]"
    assert shown("ｌaptop") == "ｌaptop [mixed scripts: Fullwidth+Latin]"
    assert shown("evil\u202egnp.exe") == "evil\\u202egnp.exe [bidirectional controls]"
    assert shown("lap\u200btop") == "lap\\u200btop [zero-width characters]"
    assert shown("a\x85b\x07") == "a\\x85b\\x07 [control characters]"
    assert shown("a\\u202eb") == "a\\\\u202eb"  # typed text cannot pass for an escape
    assert shown("p\u0430ypal", quote=True) == "'p\u0430ypal' [mixed scripts: Cyrillic+Latin]"
    assert shown("x" * 200, limit=10) == "x" * 10 + "…"
    assert name_warnings("日本語のテキスト") == []  # kanji and kana are one writing system
