"""`appliance selftest`: a fresh install passes; anything broken fails with the reason."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from appliance import selftest
from appliance.agent import models
from appliance.audit import AuditLog
from appliance.cli import main
from appliance.config import Config
from appliance.issuer.keys import DevKeyStore
from tests.tools import require


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    rc = main(["selftest", "--json", *argv])
    return rc, json.loads(capsys.readouterr().out)


def results(report: dict) -> dict[str, str]:
    return {c["name"]: c["result"] for c in report["checks"]}


def test_fresh_install_passes_with_skips(tmp_path: Path, capsys) -> None:
    rc, report = run_json(capsys, "--state-dir", str(tmp_path / "none"))
    assert rc == 0 and report["ok"], report
    got = results(report)
    assert got["imports"] == "pass"
    assert got["policy"] == "pass"
    assert got["model manifests"] == "pass"
    assert got["audit log"] == "skip"
    assert "fail" not in got.values()


def test_it_names_the_model_the_agent_loads_and_its_hash(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = models.load_manifest(models.default_manifest_path())
    _, report = run_json(capsys, "--state-dir", str(tmp_path / "none"))
    (row,) = [c for c in report["checks"] if c["name"] == "agent's model"]
    assert row["result"] == "pass" and default.name in row["detail"]
    assert default.sha256 in row["detail"] and "development default" in row["detail"]
    # On the box: the manifest agent.env names, whatever the default is.
    hailo = models.MODELS_DIR / "hailo-qwen2.5-coder-1.5b-instruct.toml"
    (tmp_path / "etc/appliance").mkdir(parents=True)
    (tmp_path / "etc/appliance/agent.env").write_text(f"BROKER_UID=940\nAGENT_MODEL={hailo}\n")
    monkeypatch.setattr(selftest, "ROOT", tmp_path)
    (tmp_path / hailo.relative_to("/")).parent.mkdir(parents=True)
    (tmp_path / hailo.relative_to("/")).write_bytes(hailo.read_bytes())
    _, report = run_json(capsys, "--state-dir", str(tmp_path / "none"))
    (row,) = [c for c in report["checks"] if c["name"] == "agent's model"]
    on_box = models.load_manifest(hailo)
    assert on_box.name in row["detail"] and on_box.sha256 in row["detail"]
    assert "AGENT_MODEL" in row["detail"]


def test_readable_table(tmp_path: Path, capsys) -> None:
    assert main(["selftest", "--state-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["check", "result", "detail"]
    assert out.rstrip().endswith("self-test passed")


def test_broken_config_fails(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "appliance.toml"
    bad.write_text("port = 'not a number\n")
    rc, report = run_json(capsys, "--config", str(bad), "--state-dir", str(tmp_path))
    assert rc == 1 and not report["ok"]
    assert results(report)["config"] == "fail"


def test_missing_policy_fails(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "appliance.toml"
    cfg.write_text(f'policy_dir = "{tmp_path / "nopolicies"}"\n')
    rc, report = run_json(capsys, "--config", str(cfg), "--state-dir", str(tmp_path))
    assert rc == 1 and results(report)["policy"] == "fail"


def test_model_file_with_wrong_hash_fails(tmp_path: Path, capsys, monkeypatch) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "m.gguf").write_bytes(b"not the model")
    default = models.load_manifest(models.default_manifest_path())
    src = (models.MODELS_DIR / models.DEFAULT_MANIFEST).read_text()
    src = re.sub(r'(?m)^file = ".*"$', 'file = "m.gguf"', src)
    (folder / models.DEFAULT_MANIFEST).write_text(src)
    monkeypatch.setattr(models, "MODELS_DIR", folder)
    rc, report = run_json(capsys, "--state-dir", str(tmp_path))
    assert rc == 1
    bad = [c for c in report["checks"] if c["result"] == "fail"]
    assert [c["name"] for c in bad] == [f"model {default.name}"]
    assert "does not match its manifest" in bad[0]["detail"]


def test_audit_log_verified_when_present_and_tampering_fails(tmp_path: Path, capsys) -> None:
    config = Config(state_dir=tmp_path / "state")
    keys = DevKeyStore(config.keys_dir)
    log = AuditLog(config.audit_dir, keys.device_signer(), signer_label=keys.label)
    log.append("test.entry", {"n": 1})
    log.close()
    rc, report = run_json(capsys, "--state-dir", str(config.state_dir))
    assert rc == 0 and results(report)["audit log"] == "pass"
    entries = next(config.audit_dir.glob("entries*"))
    entries.write_bytes(entries.read_bytes().replace(b'"n":1', b'"n":2'))
    rc, report = run_json(capsys, "--state-dir", str(config.state_dir))
    assert rc == 1 and results(report)["audit log"] == "fail"


def test_hardware_checks_fail_readably_without_hardware(tmp_path: Path) -> None:
    config = Config(state_dir=tmp_path, tpm_tcti="device:/nonexistent/tpmrm0")
    checks = {c.name: c for c in selftest.hardware_checks(config, ask=print, press_timeout_s=0)}
    assert checks["TPM"].result == "fail" and "does not exist" in checks["TPM"].detail
    assert checks["Hailo device"].result == "fail"
    assert checks["model installed"].result == "fail"  # no software rows: nothing hashed
    ok = selftest.Check("model SmolLM2", "pass", "sha256 matches")
    rows = selftest.hardware_checks(config, ask=print, press_timeout_s=0, software=[ok])
    assert {c.name: c.result for c in rows}["model installed"] == "pass"


def test_hardware_selftest_blinks_waits_for_a_press_and_checks_the_tpm(
    tmp_path: Path, monkeypatch
) -> None:
    import threading

    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    from appliance.issuer import swtpm

    require("swtpm", package="swtpm")
    factory = MockFactory(pin_class=MockPWMPin)
    monkeypatch.setattr(Device, "pin_factory", factory)
    sim = swtpm.Swtpm(tmp_path / "swtpm").start()
    try:
        config = Config(state_dir=tmp_path, tpm_tcti=sim.tcti)
        led_states: list[float] = []

        def person(prompt: str) -> None:
            assert "press the button" in prompt

            def look_and_press() -> None:
                time.sleep(0.6)
                led_states.extend(s.state for s in factory.pin(config.panel.led_pin).states)
                factory.pin(config.panel.button_pin).drive_low()

            threading.Thread(target=look_and_press).start()

        checks = {c.name: c for c in selftest.hardware_checks(config, ask=person)}
        assert checks["button and LED"].result == "pass", checks["button and LED"]
        assert 1.0 in led_states and 0.0 in led_states  # it blinked
        assert checks["TPM"].result == "pass" and sim.tcti in checks["TPM"].detail
        assert checks["broker stopped"].result == "pass"

        # Nobody presses: the row fails, with what to check.
        factory.reset()
        checks = {
            c.name: c
            for c in selftest.hardware_checks(config, ask=lambda _: None, press_timeout_s=0.3)
        }
        assert checks["button and LED"].result == "fail"
        assert "no press" in checks["button and LED"].detail
    finally:
        sim.stop()
