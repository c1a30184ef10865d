"""The command line's own routing (the commands themselves are exercised end to end)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.cli import main


def test_agent_command_reaches_the_agents_own_parser(tmp_path: Path, capsys) -> None:
    rc = main(["agent", "--socket", str(tmp_path / "a.sock"), "--model", "/nonexistent.toml"])
    assert rc != 0
    assert "no model manifest at /nonexistent.toml" in capsys.readouterr().err


def test_box_commands_say_when_no_broker_runs(tmp_path: Path, capsys) -> None:
    assert main(["status", "--state-dir", str(tmp_path)]) == 3  # cannot reach the broker
    assert "appliance up" in capsys.readouterr().err


def test_share_flag_needs_name_and_path() -> None:
    with pytest.raises(SystemExit):
        main(["up", "--dev", "--share", "nopath"])


def test_version(capsys):
    from appliance.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("appliance 0.")
