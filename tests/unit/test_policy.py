"""The policy engine and the default policies.

The default policies' own table (deploy/policies/tests/cases.json) runs here
case by case; the rest are the fail-closed and can't-be-widened properties:
broken or missing policies refuse to load, evaluation errors never allow,
forbid beats permit, and content-derived changes are never plainly allowed.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from appliance.broker.grants import Grant
from appliance.errors import PolicyUnavailable
from appliance.intents import VERBS, WRITE_VERBS
from appliance.policy import KNOWN_VERBS, PolicyEngine, PolicyRequest
from appliance.policy.__main__ import main as policy_cli
from appliance.policy.cases import load_cases, run_cases

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "deploy" / "policies"
CASES = load_cases(POLICIES / "tests" / "cases.json")

PERMIT_EVERYTHING = """
@id("owner-permits-everything")
@reason("The owner allows everything.")
@risk("low")
permit (principal, action, resource);
"""


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine.load(POLICIES)


def policy_dir(tmp_path: Path, *, default: bool = True, **files: str) -> Path:
    """A policy directory: the real schema, optionally the default policy, plus ``files``."""
    d = tmp_path / "policies"
    d.mkdir()
    shutil.copy(POLICIES / "schema.cedarschema", d)
    if default:
        shutil.copy(POLICIES / "default.cedar", d)
    for name, text in files.items():
        (d / f"{name}.cedar").write_text(text)
    return d


def req(verb: str, share: str | None = "docs", path: str = "a.txt", **kw) -> PolicyRequest:
    kw.setdefault("is_dir", False)
    return PolicyRequest(verb=verb, requester="alice", share=share, path=path, **kw)


# -- the default policies' own table -----------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_default_policy_case(engine: PolicyEngine, case) -> None:
    (result,) = run_cases(engine, [case])
    assert result.ok, result.describe()


def test_cases_cover_every_verb_and_every_rule(engine: PolicyEngine) -> None:
    assert {c.request.verb for c in CASES} >= KNOWN_VERBS
    named = {r for c in CASES for r in c.rules}
    assert named == {r.id for r in engine.rules}


def test_reasons_are_the_policy_annotations(engine: PolicyEngine) -> None:
    by_id = {r.id: r for r in engine.rules}
    d = engine.decide(req("file.write", derived_fields=("params.content",)))
    assert d.decision == "approve"
    assert d.rules == ("content-derived-change-needs-approval", "change-needs-approval")
    assert d.reasons == tuple(by_id[i].reason for i in d.rules)
    assert all(r.endswith(".") for r in d.reasons)  # sentences, not ids


def test_requester_and_path_text_cannot_inject_policy_syntax(engine: PolicyEngine) -> None:
    # Entity ids go to Cedar as JSON, never spliced into policy text.
    nasty = 'a"; permit(principal, action, resource); //\n'
    d = engine.decide(PolicyRequest("file.write", nasty, "docs", nasty, is_dir=False))
    assert d.decision == "approve"
    d = engine.decide(PolicyRequest("file.read", nasty, None, nasty))
    assert d.decision == "deny"


def test_unknown_verb_is_denied(engine: PolicyEngine) -> None:
    d = engine.decide(req("shell.exec"))
    assert (d.decision, d.risk) == ("deny", "high")


# -- loading fails closed ------------------------------------------------------


def test_missing_directory_fails_closed(tmp_path: Path) -> None:
    with pytest.raises(PolicyUnavailable, match="does not exist"):
        PolicyEngine.load(tmp_path / "nope")


def test_empty_directory_fails_closed(tmp_path: Path) -> None:
    with pytest.raises(PolicyUnavailable, match="missing"):
        PolicyEngine.load(tmp_path)


def test_schema_without_policies_fails_closed(tmp_path: Path) -> None:
    with pytest.raises(PolicyUnavailable, match=r"no policy files"):
        PolicyEngine.load(policy_dir(tmp_path, default=False))


def test_policy_files_with_no_policies_fail_closed(tmp_path: Path) -> None:
    d = policy_dir(tmp_path, default=False, empty="// only a comment\n")
    with pytest.raises(PolicyUnavailable, match="contain no policies"):
        PolicyEngine.load(d)


def test_missing_schema_fails_closed(tmp_path: Path) -> None:
    d = policy_dir(tmp_path)
    (d / "schema.cedarschema").unlink()
    with pytest.raises(PolicyUnavailable, match="schema.cedarschema is missing"):
        PolicyEngine.load(d)


def test_broken_schema_fails_closed(tmp_path: Path) -> None:
    d = policy_dir(tmp_path)
    (d / "schema.cedarschema").write_text("entity Requester\naction {")
    with pytest.raises(PolicyUnavailable, match="schema.cedarschema does not parse"):
        PolicyEngine.load(d)


def test_broken_policy_file_fails_closed(tmp_path: Path) -> None:
    # A truncated edit of the default policy: the whole set refuses to load,
    # not "the rules that still parse".
    text = (POLICIES / "default.cedar").read_text()
    d = policy_dir(tmp_path, default=False, default_broken=text[: len(text) // 2])
    with pytest.raises(PolicyUnavailable, match="default_broken.cedar does not parse"):
        PolicyEngine.load(d)


def test_misspelt_attribute_fails_closed(tmp_path: Path) -> None:
    # Without the schema check this forbid would error at run time and Cedar
    # would skip it: the misspelling would silently widen the policy.
    typo = PERMIT_EVERYTHING.replace("permit", "forbid").replace(";", " when { context.aproved };")
    d = policy_dir(tmp_path, typo=typo)
    with pytest.raises(PolicyUnavailable, match="typo.cedar does not match schema"):
        PolicyEngine.load(d)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('@id("x")\n@risk("low")\npermit (principal, action, resource);', "@reason"),
        ('@reason("r.")\n@risk("low")\npermit (principal, action, resource);', "@id"),
        (
            '@id("x")\n@reason("r.")\n@risk("extreme")\npermit (principal, action, resource);',
            "low, medium or high",
        ),
        (
            '@id("change-needs-approval")\n@reason("r.")\n@risk("low")\n'
            "permit (principal, action, resource);",
            "already used in default.cedar",
        ),
        (
            '@id("t")\n@reason("r.")\n@risk("low")\n'
            "permit (principal == ?principal, action, resource);",
            "templates are not supported",
        ),
    ],
    ids=["no-reason", "no-id", "bad-risk", "duplicate-id", "template"],
)
def test_policy_without_proper_annotations_fails_closed(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(PolicyUnavailable, match=message):
        PolicyEngine.load(policy_dir(tmp_path, local=text))


def test_unreadable_policy_fails_closed(tmp_path: Path) -> None:
    d = policy_dir(tmp_path)
    (d / "bad.cedar").write_bytes(b"\xff\xfe permit")
    with pytest.raises(PolicyUnavailable, match="bad.cedar cannot be read"):
        PolicyEngine.load(d)


# -- deciding fails closed -----------------------------------------------------


def test_evaluation_error_in_a_forbid_never_allows(tmp_path: Path) -> None:
    # Integer overflow passes validation but errors at run time. Plain Cedar
    # skips the erroring forbid and allows the read; the engine must refuse.
    overflow = (
        '@id("broken-forbid")\n@reason("r.")\n@risk("high")\n'
        'forbid (principal, action in Action::"read", resource)\n'
        "when { 9223372036854775807 + 1 > 0 };"
    )
    engine = PolicyEngine.load(policy_dir(tmp_path, overflow=overflow))
    with pytest.raises(PolicyUnavailable, match="evaluation failed"):
        engine.decide(req("file.read"))
    # The verbs the broken rule does not apply to still decide normally.
    assert engine.decide(req("file.write")).decision == "approve"


def test_nothing_permits_means_deny(tmp_path: Path) -> None:
    reads_only = (
        '@id("reads")\n@reason("Reads are fine.")\n@risk("low")\n'
        'permit (principal, action in Action::"read", resource);'
    )
    engine = PolicyEngine.load(policy_dir(tmp_path, default=False, reads=reads_only))
    d = engine.decide(req("file.write"))
    assert (d.decision, d.risk, d.reasons, d.rules) == (
        "deny",
        "high",
        ("No policy allows this.",),
        (),
    )
    assert engine.decide(req("file.read")).decision == "allow"


# -- forbid beats permit; derived content is never plainly allowed ------------


def test_added_permit_takes_effect_but_forbids_still_hold(tmp_path: Path) -> None:
    engine = PolicyEngine.load(policy_dir(tmp_path, local=PERMIT_EVERYTHING))
    # The permit works where no forbid applies (so the test can fail)...
    assert engine.decide(req("file.write")).decision == "allow"
    # ...and every forbid still wins over it.
    outside = engine.decide(req("file.read", share=None, path="/etc/shadow"))
    assert (outside.decision, outside.rules) == ("deny", ("outside-shares-denied",))
    copy_out = engine.decide(req("file.copy", to_share=None, to_path="/tmp/x"))
    assert copy_out.decision == "deny"
    assert "destination-outside-shares-denied" in copy_out.rules
    folder = engine.decide(req("file.delete", path="photos", is_dir=True))
    assert (folder.decision, folder.risk) == ("approve", "high")


@pytest.mark.parametrize("verb", sorted(WRITE_VERBS | {"action.undo"}))
def test_derived_change_is_never_plainly_allowed_by_an_added_permit(
    tmp_path: Path, verb: str
) -> None:
    engine = PolicyEngine.load(policy_dir(tmp_path, local=PERMIT_EVERYTHING))
    extra = {"to_share": "docs", "to_path": "b.txt"} if verb in ("file.copy", "file.move") else {}
    for fields in (("resource",), ("params.to",), ("params.content", "resource")):
        d = engine.decide(req(verb, derived_fields=fields, **extra))
        assert d.decision == "approve", (verb, fields, d)
        assert d.risk == "high"
        assert "content-derived-change-needs-approval" in d.rules


def test_builtin_guards_hold_when_the_default_forbids_are_deleted(tmp_path: Path) -> None:
    # An owner replaces the default file with "permit everything": the
    # threat-model floors are in the engine, not only in the editable file.
    engine = PolicyEngine.load(policy_dir(tmp_path, default=False, mine=PERMIT_EVERYTHING))
    assert engine.decide(req("file.write")).decision == "allow"  # the permit is live
    derived = engine.decide(req("file.write", derived_fields=("params.content",)))
    assert (derived.decision, derived.risk) == ("approve", "high")
    assert "built-in" in derived.reasons[0]
    assert engine.decide(req("file.read", share=None, path="/etc/shadow")).decision == "deny"
    copy_out = engine.decide(req("file.copy", to_share=None, to_path="/tmp/x"))
    assert copy_out.decision == "deny"
    assert engine.decide(req("action.undo", share=None, path="/x")).decision == "deny"


def test_owner_rule_for_one_share_is_scoped_to_that_share(tmp_path: Path) -> None:
    # The example from docs/policy.md: writes in "scratch" need no button.
    scratch = (
        '@id("scratch-writes-allowed")\n'
        '@reason("The scratch share is for throwaway files; writing there needs no press.")\n'
        '@risk("low")\n'
        'permit (principal, action in [Action::"file.write", Action::"file.mkdir"], '
        'resource in Share::"scratch");'
    )
    engine = PolicyEngine.load(policy_dir(tmp_path, local=scratch))
    assert engine.decide(req("file.write", share="scratch")).decision == "allow"
    assert engine.decide(req("file.write", share="docs")).decision == "approve"
    assert engine.decide(req("file.delete", share="scratch")).decision == "approve"
    derived = engine.decide(req("file.write", share="scratch", derived_fields=("params.content",)))
    assert derived.decision == "approve"


# -- the check command an owner runs -----------------------------------------


def test_check_command_passes_on_defaults_and_fails_on_a_changed_expectation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert policy_cli(["check", str(POLICIES)]) == 0
    assert f"{len(CASES)} passed, 0 failed" in capsys.readouterr().out
    # An owner's permissive edit breaks an expectation: the check says so.
    d = policy_dir(tmp_path, local=PERMIT_EVERYTHING)
    (d / "tests").mkdir()
    shutil.copy(POLICIES / "tests" / "cases.json", d / "tests")
    assert policy_cli(["check", str(d)]) == 1
    out = capsys.readouterr().out
    assert "FAIL file.write of a file inside a share needs approval" in out


def test_check_command_reports_a_broken_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = policy_dir(tmp_path, broken="permit (principal, action")
    assert policy_cli(["check", str(d)]) == 1
    assert "broken.cedar does not parse" in capsys.readouterr().err


def test_verbs_match_the_intent_language() -> None:
    # If intents gain a verb, the schema and default policy must learn it too.
    views = {"view.plan", "view.task", "view.approval", "view.audit"}
    assert set(VERBS) | {"action.undo", "client.pair", "net.request"} | views == KNOWN_VERBS
    schema = (POLICIES / "schema.cedarschema").read_text()
    for verb in KNOWN_VERBS:
        assert f'"{verb}"' in schema


def test_owner_examples_in_the_docs_load_and_do_what_they_say(tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "policy.md").read_text()
    blocks = doc.split("```cedar\n")[1:]
    examples = next(b.split("```")[0] for b in blocks if "archive-read-only" in b)
    engine = PolicyEngine.load(policy_dir(tmp_path, local=examples))
    assert engine.decide(req("file.write", share="scratch")).decision == "allow"
    archive = engine.decide(req("file.write", share="archive"))
    assert (archive.decision, archive.rules) == ("deny", ("archive-read-only",))
    # The rules name the desktop by the name it was paired under.
    grant = Grant(read=frozenset({"docs", "school"}), audit=True)
    kids = PolicyRequest(
        "file.read", "cl_1", "docs", "a.txt", is_dir=False, grant=grant, name="kids-laptop"
    )
    assert engine.decide(kids).decision == "deny"
    school = dataclasses.replace(kids, share="school")
    assert engine.decide(school).decision == "allow"
    assert engine.decide(dataclasses.replace(kids, name="desk")).decision == "allow"
    # Its own history it sees; everyone's, which its grant would allow, it does not.
    view = PolicyRequest("view.plan", "cl_1", None, "plan_1", grant=grant, name="kids-laptop")
    assert engine.decide(dataclasses.replace(view, mine=True)).decision == "allow"
    assert engine.decide(view).decision == "deny"
    assert engine.decide(dataclasses.replace(view, name="desk")).decision == "allow"
