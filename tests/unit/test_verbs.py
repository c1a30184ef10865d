"""The verb registry is the one declaration of every verb: the intents'
validation, the executor's dispatch, the policy's verb sets and the plugin
host's operations all follow it, and a policy schema that disagrees with it
does not load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from appliance.broker.files import UndoRecord
from appliance.broker.files.base import HANDLERS
from appliance.config import DEFAULT_POLICY_DIR
from appliance.errors import ExecutionError, PolicyUnavailable
from appliance.intents import Intent, plan_schema
from appliance.issuer import plugin_tokens
from appliance.plugins.host import CALL_PARAMS
from appliance.policy import PolicyEngine
from appliance.policy.engine import CHANGE_VERBS, FILE_VERBS, KNOWN_VERBS
from appliance.verbs import (
    INTENT_VERBS,
    PLUGIN_READ_OPS,
    PLUGIN_WRITE_OPS,
    REGISTRY,
    Group,
    Undo,
)


def test_every_verb_a_plan_may_name_has_exactly_one_handler() -> None:
    assert set(HANDLERS) == set(INTENT_VERBS)
    enum = plan_schema()["$defs"]["Intent"]["properties"]["verb"]["enum"]
    assert enum == list(INTENT_VERBS)


def test_the_policy_and_the_plugins_follow_the_registry() -> None:
    assert set(REGISTRY) == KNOWN_VERBS
    assert {v for v, s in REGISTRY.items() if s.changes} == CHANGE_VERBS
    assert "action.undo" in FILE_VERBS and "client.pair" not in FILE_VERBS
    assert set(CALL_PARAMS) == set(PLUGIN_READ_OPS) | set(PLUGIN_WRITE_OPS)
    for op, params in CALL_PARAMS.items():
        assert params == tuple(REGISTRY[op].params)
    # A plugin may never delete, rename or copy, and never undo: not in its token's grant check.
    for verb in ("file.delete", "file.rename", "file.copy", "action.undo"):
        assert verb not in plugin_tokens._GRANT_CHECK
    for op in (*PLUGIN_READ_OPS, *PLUGIN_WRITE_OPS):
        assert f'"{op}"' in plugin_tokens._GRANT_CHECK


@pytest.mark.parametrize(
    ("intent", "problem"),
    [
        ({"verb": "file.move", "resource": "share:d/a"}, "needs params.to"),
        ({"verb": "file.move", "resource": "share:d/a", "params": {"to": 3}}, "must be str"),
        ({"verb": "file.read", "resource": "share:d/a", "params": {"max_bytes": True}}, "int"),
        ({"verb": "file.list", "resource": "share:d/", "params": {"depth": 2}}, "no parameter"),
        (
            {
                "verb": "file.write",
                "resource": "share:d/a",
                "params": {"content": "", "encoding": "x"},
            },
            "'utf-8' or 'base64'",
        ),
        ({"verb": "action.undo", "resource": "share:d/a", "params": {"action_id": "a"}}, "verb"),
    ],
)
def test_intents_are_validated_from_the_registry(intent: dict, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        Intent.model_validate(intent)


def schema_copy(tmp_path: Path, old: str, new: str) -> Path:
    folder = tmp_path / "policies"
    shutil.copytree(DEFAULT_POLICY_DIR, folder, ignore=shutil.ignore_patterns("tests"))
    schema = folder / "schema.cedarschema"
    text = schema.read_text()
    assert old in text
    schema.write_text(text.replace(old, new))
    return folder


def test_a_schema_that_moves_a_verb_into_another_group_is_refused(tmp_path: Path) -> None:
    """A rule written for Action::"read" must never cover a delete."""
    folder = schema_copy(tmp_path, '"file.write", "file.delete",', '"file.write",\n')
    text = (folder / "schema.cedarschema").read_text()
    (folder / "schema.cedarschema").write_text(
        text.replace('"file.read" in ["read"]', '"file.read", "file.delete" in ["read"]')
    )
    with pytest.raises(PolicyUnavailable, match="'file.delete' in the action group"):
        PolicyEngine.load(folder)


def test_a_schema_that_forgets_a_verb_is_refused(tmp_path: Path) -> None:
    folder = schema_copy(tmp_path, '"file.write", "file.delete",', '"file.write",')
    with pytest.raises(PolicyUnavailable, match="file.delete"):
        PolicyEngine.load(folder)


def test_the_shipped_schema_agrees_with_the_registry() -> None:
    PolicyEngine.load(DEFAULT_POLICY_DIR)  # raises if not
    for verb, spec in REGISTRY.items():
        assert spec.group in (Group.read, Group.change, Group.view, Group.none), verb


@pytest.mark.parametrize("verb", sorted(v for v, s in REGISTRY.items() if s.undo is not Undo.none))
def test_undo_records_round_trip_and_refuse_a_missing_field(verb: str) -> None:
    if REGISTRY[verb].undo is Undo.reverse:
        with pytest.raises(ExecutionError, match="no undo"):
            UndoRecord.from_json({"verb": verb})
        return
    full = {
        "verb": verb,
        "target": "share:d/a",
        "from": "share:d/a",
        "to": "share:d/b",
        "snapshot_id": "ab" * 32,
        "sha256": "cd" * 32,
        "created": ["share:d/a"],
    }
    record = UndoRecord.from_json(full)
    stored = json.loads(json.dumps(record.to_json()))
    assert UndoRecord.from_json(stored) == record
    for key in stored:
        if key == "verb":
            continue
        with pytest.raises(ExecutionError, match="malformed"):
            UndoRecord.from_json({k: v for k, v in stored.items() if k != key})


def test_reads_have_no_undo() -> None:
    for verb in ("file.list", "file.stat", "file.read"):
        with pytest.raises(ExecutionError, match="no undo"):
            UndoRecord.from_json({"verb": verb})
