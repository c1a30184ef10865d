"""`appliance pair` without --url: several boxes answer, it asks which (or
--box names one); refused answers are never offered; none to trust: exit 3."""

from __future__ import annotations

import io
from typing import Any

import pytest

from appliance.cli import main, pairing
from appliance.cli.output import UNREACHABLE, USAGE
from appliance.discovery import Checked, Found


def box(name: str, fp: str, ok: bool = True) -> Checked:
    found = Found(f"appliance on {name}", name, ("10.0.0.9",), 8443, fp, "dk", (1,))
    if ok:
        return Checked(found, url=f"https://{name}:8443", certificate_pem="PEM")
    return Checked(found, problem="the certificate does not match")


class Chosen(Exception):
    pass


@pytest.fixture
def answers(monkeypatch: pytest.MonkeyPatch) -> list[Checked]:
    found: list[Checked] = []
    monkeypatch.setattr(pairing, "_found", lambda out, timeout: found)

    def client(url: str, **kw: Any) -> None:
        raise Chosen(url, kw["fingerprint"], kw["certificate_pem"])

    monkeypatch.setattr(pairing, "ApplianceClient", client)
    return found


def pair(monkeypatch: pytest.MonkeyPatch, stdin: str, *argv: str) -> int | Chosen:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    try:
        return main(["pair", "--name", "desk", *argv])
    except Chosen as chosen:
        return chosen


def test_several_boxes_ask_which(answers: list[Checked], monkeypatch, capsys) -> None:
    answers += [box("kitchen", "AA:01"), box("office", "BB:02"), box("evil", "AA:01", ok=False)]
    chosen = pair(monkeypatch, "2\n")
    assert isinstance(chosen, Chosen) and chosen.args == ("https://office:8443", "BB:02", "PEM")
    err = capsys.readouterr().err
    assert "several boxes answer" in err and "1. kitchen" in err and "refused evil" in err
    assert "evil at" not in err  # a refused answer is never offered


def test_box_by_name_or_fingerprint(answers: list[Checked], monkeypatch) -> None:
    answers += [box("kitchen", "AA:01"), box("office", "BB:02")]
    chosen = pair(monkeypatch, "", "--box", "kitchen")
    assert isinstance(chosen, Chosen) and chosen.args[0] == "https://kitchen:8443"
    chosen = pair(monkeypatch, "", "--fingerprint", "bb02")
    assert isinstance(chosen, Chosen) and chosen.args[0] == "https://office:8443"


def test_no_answer_to_the_question_is_a_usage_error(answers, monkeypatch, capsys) -> None:
    answers += [box("kitchen", "AA:01"), box("office", "BB:02")]
    assert pair(monkeypatch, "") == USAGE
    assert "--box" in capsys.readouterr().err


def test_nothing_to_trust(answers: list[Checked], monkeypatch, capsys) -> None:
    assert pair(monkeypatch, "") == UNREACHABLE
    assert "no box on this network answered" in capsys.readouterr().err
    answers.append(box("evil", "AA:01", ok=False))
    assert pair(monkeypatch, "") == UNREACHABLE
    assert "no box could be trusted" in capsys.readouterr().err
