"""The systemd units: they parse and verify, their exposure is within target,
the agent has no network, each gets only the devices it needs; the users and
folders they run with are made by sysusers.d and tmpfiles.d; the broker runs
no external program in production."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.deploy.conftest import DEPLOY, REPO, UNITS, need, run, stage_minimal_root

TARGETS = {"appliance-agent.service": 2.0, "appliance-broker.service": 3.5}


def unit_values(unit: Path, key: str) -> list[str]:
    text = unit.read_text().replace("\\\n", " ")
    return [m.group(1).strip() for m in re.finditer(rf"^{key}=(.*)$", text, re.M)]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need("systemd-analyze", "systemctl", "openssl")
    root = tmp_path_factory.mktemp("root")
    keyring = root.parent / "keyring.pem"
    keyring.write_text("")
    stage_minimal_root(root, keyring)
    return root


def test_units_verify(root: Path) -> None:
    """systemd-analyze verify on the installed units: any warning fails (an
    unknown key, a bad value, a missing program)."""
    names = [f"/usr/lib/systemd/system/{u.name}" for u in UNITS]
    proc = run("systemd-analyze", "verify", f"--root={root}", *names)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def test_verify_catches_a_bad_unit(root: Path, tmp_path: Path) -> None:
    """The check above would see a broken unit (so its silence means something)."""
    bad = root / "usr/lib/systemd/system/appliance-bad.service"
    text = (DEPLOY / "systemd/appliance-broker.service").read_text()
    bad.write_text(text.replace("DeviceAllow=/dev/tpmrm0 rw", "DeviceAllow=/dev/tpmrm0 rwz"))
    try:
        proc = run(
            "systemd-analyze",
            "verify",
            f"--root={root}",
            "/usr/lib/systemd/system/appliance-bad.service",
        )
        assert "Invalid device rights" in proc.stderr
    finally:
        bad.unlink()


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_exposure_within_target(name: str) -> None:
    need("systemd-analyze")
    proc = run("systemd-analyze", "security", "--offline=true", DEPLOY / "systemd" / name)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    assert float(m.group(1)) <= TARGETS[name], proc.stdout


def test_exposure_check_sees_a_weak_unit(tmp_path: Path) -> None:
    """Without its hardening the broker's exposure is far over target."""
    need("systemd-analyze")
    unit = tmp_path / "appliance-broker.service"
    lines = (DEPLOY / "systemd/appliance-broker.service").read_text().splitlines()
    keep = [
        ln for ln in lines if not ln.startswith(("Protect", "Restrict", "SystemCall", "Private"))
    ]
    unit.write_text("\n".join(keep) + "\n")
    proc = run("systemd-analyze", "security", "--offline=true", unit)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert m and float(m.group(1)) > TARGETS["appliance-broker.service"]


def test_agent_has_no_network() -> None:
    agent = DEPLOY / "systemd/appliance-agent.service"
    assert unit_values(agent, "PrivateNetwork") == ["yes"]
    assert unit_values(agent, "RestrictAddressFamilies") == ["AF_UNIX"]
    assert unit_values(agent, "IPAddressDeny") == ["any"]
    assert unit_values(agent, "CapabilityBoundingSet") == [""]
    # Nor can it see the broker's state or the shares.
    assert "-/data" in unit_values(agent, "InaccessiblePaths")[0].split()


def test_the_model_yields_the_cpu_to_the_broker() -> None:
    """The agent may compute on every core; the broker (the API, the button,
    the light) must still come first whenever it wants the CPU."""
    broker = DEPLOY / "systemd/appliance-broker.service"
    agent = DEPLOY / "systemd/appliance-agent.service"
    assert int(unit_values(agent, "Nice")[0]) > int((unit_values(broker, "Nice") or ["0"])[0])
    assert int(unit_values(agent, "CPUWeight")[0]) < int(
        (unit_values(broker, "CPUWeight") or ["100"])[0]
    )


def test_devices_only_what_each_needs() -> None:
    broker = DEPLOY / "systemd/appliance-broker.service"
    agent = DEPLOY / "systemd/appliance-agent.service"
    for unit in (broker, agent):
        assert unit_values(unit, "DevicePolicy") == ["closed"]
        for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "NoNewPrivileges"):
            assert unit_values(unit, key) in (["strict"], ["yes"]), (unit.name, key)
        assert unit_values(unit, "SystemCallFilter")[0] == "@system-service"
        assert unit_values(unit, "CapabilityBoundingSet") == [""]
    # The broker: the TPM and the GPIO chips (button, LED); nothing of the Hailo.
    assert sorted(unit_values(broker, "DeviceAllow")) == ["/dev/tpmrm0 rw", "char-gpiochip rw"]
    # The agent: only the Hailo device node (its name differs between HailoRT
    # releases); no TPM, no GPIO.
    assert sorted(unit_values(agent, "DeviceAllow")) == ["/dev/h1x-0 rw", "/dev/hailo0 rw"]
    assert unit_values(broker, "User") == ["appliance-broker"]
    assert unit_values(agent, "User") == ["appliance-agent"]


def sysusers(root: Path) -> None:
    need("systemd-sysusers")
    (root / "etc").mkdir(exist_ok=True)
    proc = run("systemd-sysusers", f"--root={root}", DEPLOY / "sysusers.d/appliance.conf")
    assert proc.returncode == 0, proc.stderr


def test_agent_answers_only_the_broker_uid(tmp_path: Path) -> None:
    """The uid in agent.env and the broker's agent_uid are the fixed ids sysusers makes."""
    sysusers(tmp_path)
    passwd = {
        ln.split(":")[0]: ln.split(":") for ln in (tmp_path / "etc/passwd").read_text().splitlines()
    }
    groups = {ln.split(":")[0] for ln in (tmp_path / "etc/group").read_text().splitlines()}
    assert {"tss", "gpio", "hailo", "appliance-broker", "appliance-agent"} <= groups
    assert passwd["appliance-broker"][6].endswith("nologin")
    env = (DEPLOY / "appliance/agent.env").read_text()
    assert f"BROKER_UID={passwd['appliance-broker'][2]}\n" in env
    toml = (DEPLOY / "appliance/appliance.toml").read_text()
    assert f"agent_uid = {passwd['appliance-agent'][2]}\n" in toml


def test_tmpfiles_make_private_state(tmp_path: Path) -> None:
    need("systemd-tmpfiles")
    sysusers(tmp_path)
    proc = run(
        "systemd-tmpfiles", f"--root={tmp_path}", "--create", DEPLOY / "tmpfiles.d/appliance.conf"
    )
    assert proc.returncode == 0, proc.stderr
    state = tmp_path / "data/appliance/state"
    assert state.stat().st_mode & 0o777 == 0o700
    assert state.stat().st_uid == 940
    assert (tmp_path / "data/appliance/shares/files").stat().st_uid == 940
    assert (tmp_path / "var/lib/appliance").readlink() == Path("/data/appliance/state")
    assert (state / "keys/pcr-policy.json").readlink() == Path(
        "/usr/share/appliance/keys/pcr-policy.json"
    )


def test_config_is_the_production_config() -> None:
    from appliance.config import Config, load_toml

    config = Config(**load_toml(DEPLOY / "appliance/appliance.toml"))
    assert not config.dev and config.keystore == "tpm"
    assert config.tpm_tcti == "device:/dev/tpmrm0"
    assert str(config.agent_socket_path) == "/run/appliance-agent/agent.sock"
    # The broker's unit may write exactly where the config keeps state and shares.
    rw = unit_values(DEPLOY / "systemd/appliance-broker.service", "ReadWritePaths")
    assert rw == ["/data/appliance"]
    assert config.state_dir.is_relative_to("/data/appliance")
    assert all(p.is_relative_to("/data/appliance") for p in config.shares.values())


# Calls that start another program. The production broker makes none: the
# only ones in the package start the development TPM (swtpm) and the
# development agent, both only in development mode, the plugin authors'
# compiler (`python -m appliance.plugins.build`), and the owner's `appliance
# update` (rauc, systemctl; as root at the console or from the mark-good unit),
# neither of which anything in the broker imports (checked below).
SPAWNS = {"Popen", "run", "call", "check_call", "check_output", "system", "spawnv", "spawnl",
          "execv", "execve", "execvp", "execl", "popen", "create_subprocess_exec",
          "create_subprocess_shell"}  # fmt: skip
DEV_ONLY = {
    ("appliance/issuer/swtpm.py", "start"),
    ("appliance/serve.py", "start_agent"),
    ("appliance/plugins/build.py", "compile_plugin"),
    ("appliance/update.py", "run"),
}


def test_no_external_program_outside_development() -> None:
    found = set()
    for path in (REPO / "appliance").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in SPAWNS
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id in ("subprocess", "os", "asyncio")
                ):
                    found.add((str(path.relative_to(REPO)), fn.name))
    assert found <= DEV_ONLY, f"new external program calls: {found - DEV_ONLY}"
    importers = [
        path
        for path in (REPO / "appliance").rglob("*.py")
        if path.name != "build.py" and "plugins.build" in path.read_text()
    ]
    assert not importers, f"the plugin compiler is reachable from {importers}"
    # `appliance update` is registered by the command line and imported by the
    # self-test (its slot reader); never by the broker, the API or the agent.
    importers = [
        path.relative_to(REPO)
        for path in (REPO / "appliance").rglob("*.py")
        if re.search(
            r"from appliance(\.update)? import (update|Slots)|import appliance\.update",
            path.read_text(),
        )  # fmt: skip
    ]
    assert {str(p) for p in importers} <= {"appliance/cli/parser.py", "appliance/selftest.py"}, (
        importers
    )


def test_production_never_starts_swtpm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In production the key store opens the TPM device; it never starts a
    program, even with swtpm installed (here the device is absent: it fails closed)."""
    from appliance.config import Config
    from appliance.issuer import choose, swtpm

    started = []
    monkeypatch.setattr(swtpm.Swtpm, "start", lambda self, *a, **k: started.append(self))
    with pytest.raises(Exception) as err:  # noqa: B017 - whatever the TPM layer raises
        choose.open_keystore(Config(state_dir=tmp_path, tpm_tcti="device:/nonexistent/tpmrm0"))
    assert not started
    assert err.value is not None


def test_pairing_hint(tmp_path: Path) -> None:
    """The pairing hint shows the same fingerprint the broker prints, on the
    login banner and in the mDNS service file."""
    need("openssl")
    from appliance.api.tls import ensure_certificate

    _, _, fp = ensure_certificate(tmp_path / "tls", ["localhost"])
    env = {
        "PATH": "/usr/bin:/bin",
        "APPLIANCE_CERT": str(tmp_path / "tls/device.crt"),
        "APPLIANCE_RUN": str(tmp_path / "run"),
        "APPLIANCE_CONSOLE": str(tmp_path / "console"),
    }
    proc = run("sh", DEPLOY / "appliance/pairing-hint", env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"--fingerprint {fp}" in (tmp_path / "run/issue.d/appliance.issue").read_text()
    # The broker announces itself by mDNS; the hint writes no second announcement.
    assert not list(tmp_path.rglob("*.service"))
    assert fp in (tmp_path / "console").read_text()


def test_pairing_hint_without_a_certificate_says_why(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "APPLIANCE_CERT": str(tmp_path / "none.crt"),
           "APPLIANCE_WAIT_S": "1", "APPLIANCE_RUN": str(tmp_path)}  # fmt: skip
    proc = run("sh", DEPLOY / "appliance/pairing-hint", env=env)
    assert proc.returncode == 1 and "no certificate" in proc.stderr
