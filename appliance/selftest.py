"""``appliance selftest``: can this box run, and what is missing?

Software checks (always): the Python packages import, the configuration
parses, the Cedar policies compile and pass their own cases, the model
manifests parse, each model file that is present matches its sha256, and the
audit log verifies if the state directory has one. A fresh install with no
state, no TPM and no model file passes: what is absent and optional is
``skip``, what is broken is ``fail``.

Hardware checks (``--hardware``, on the box with the broker stopped): the LED
blinks and a person confirms by pressing the button, the TPM answers and is
not in lockout, the Hailo device is there and its runtime imports, and at
least one model file is installed and matches its manifest.

Exit status 0 when nothing failed, 1 otherwise.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

Result = Literal["pass", "fail", "skip"]

DEFAULT_CONFIG = Path(os.environ.get("APPLIANCE_CONFIG", "/etc/appliance/appliance.toml"))
HAILO_DEVICE = Path("/dev/hailo0")
PRESS_TIMEOUT_S = 30.0

# What the broker and the agent import; a missing one means a broken install.
MODULES = (
    "fastapi",
    "uvicorn",
    "pydantic",
    "httpx",
    "cryptography",
    "biscuit_auth",
    "cedarpy",
    "tpm2_pytss",
    "gpiozero",
    "llama_cpp",
    "appliance.broker.service",
    "appliance.api.app",
    "appliance.approval.gpio",
    "appliance.agent.backends",
)


@dataclass(frozen=True)
class Check:
    name: str
    result: Result
    detail: str


# Installed only with an extra; absent is a skip, broken is a failure.
OPTIONAL = {"llama_cpp": "the CPU model backend (extra 'cpu'); the Hailo backend needs none"}


def _imports() -> Iterator[Check]:
    failed = []
    for name in MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if name in OPTIONAL and e.name == name:
                yield Check(f"import {name}", "skip", f"not installed: {OPTIONAL[name]}")
            else:
                failed.append(f"{name} ({type(e).__name__}: {e})")
        except Exception as e:  # noqa: BLE001 - any import failure is the finding
            failed.append(f"{name} ({type(e).__name__}: {e})")
    if failed:
        yield Check("imports", "fail", "cannot import " + "; ".join(failed))
    else:
        yield Check("imports", "pass", "the required packages import")


def load_config(path: Path | None, state_dir: Path) -> tuple[Any, Check]:
    """The configuration the broker would use, and how it went."""
    from appliance.config import Config, load_toml

    config_path = path or DEFAULT_CONFIG
    if not config_path.exists():
        if path is not None:
            return Config(state_dir=state_dir), Check(
                "config", "fail", f"{config_path} does not exist"
            )
        return Config(state_dir=state_dir), Check(
            "config", "skip", f"no file at {config_path}; the built-in defaults apply"
        )
    try:
        kwargs = load_toml(config_path)
        kwargs.setdefault("state_dir", state_dir)
        config = Config(**kwargs)
    except Exception as e:  # noqa: BLE001 - TOML, unknown keys, bad values
        return Config(state_dir=state_dir), Check(
            "config", "fail", f"{config_path}: {type(e).__name__}: {e}"
        )
    return config, Check("config", "pass", str(config_path))


def _policy(config: Any) -> Iterator[Check]:
    from appliance.errors import PolicyUnavailable
    from appliance.policy.cases import CASES_FILE, load_cases, run_cases
    from appliance.policy.engine import PolicyEngine

    try:
        engine = PolicyEngine.load(config.policy_dir)
    except PolicyUnavailable as e:
        yield Check("policy", "fail", e.reason)
        return
    detail = f"{len(engine.rules)} rules compile ({config.policy_dir})"
    cases = config.policy_dir / CASES_FILE
    if cases.exists():
        try:
            results = run_cases(engine, load_cases(cases))
        except PolicyUnavailable as e:
            yield Check("policy", "fail", f"{detail}; its cases do not run: {e.reason}")
            return
        bad = [r.describe() for r in results if not r.ok]
        if bad:
            yield Check("policy", "fail", f"{detail}; {len(bad)} cases fail: {bad[0]}")
            return
        detail += f"; {len(results)} cases pass"
    yield Check("policy", "pass", detail)


def _models() -> Iterator[Check]:
    from appliance.agent.errors import ModelError
    from appliance.agent.models import MODELS_DIR, load_manifest, resolve_file, verify

    paths = sorted(MODELS_DIR.glob("*.toml")) if MODELS_DIR.is_dir() else []
    if not paths:
        yield Check("model manifests", "skip", f"no model manifests in {MODELS_DIR}")
        return
    manifests, broken = [], []
    for p in paths:
        try:
            manifests.append(load_manifest(p))
        except ModelError as e:
            broken.append(f"{p.name}: {e}")
    if broken:
        yield Check("model manifests", "fail", "; ".join(broken))
    else:
        yield Check("model manifests", "pass", f"{len(manifests)} parse ({MODELS_DIR})")
    for m in manifests:
        name = f"model {m.name}"
        if m.file.startswith("ollama:"):
            yield Check(name, "skip", "served by Ollama (no local file)")
            continue
        try:
            path = resolve_file(m)
        except ModelError as e:
            yield Check(name, "skip", f"not installed: {e}")
            continue
        if not path.exists():
            yield Check(name, "skip", f"not installed ({path})")
            continue
        try:
            verify(m)
        except ModelError as e:
            yield Check(name, "fail", str(e))
        else:
            yield Check(name, "pass", f"sha256 matches ({path})")


def _audit(config: Any) -> Iterator[Check]:
    from appliance.audit import verify_log

    audit_dir = config.audit_dir
    pub = config.keys_dir / "device.pub.pem"
    if not audit_dir.is_dir():
        yield Check("audit log", "skip", f"no audit log yet ({audit_dir})")
        return
    if not pub.exists():
        yield Check("audit log", "fail", f"{audit_dir} exists but the device key {pub} does not")
        return
    try:
        report = verify_log(audit_dir, pub.read_bytes())
    except PermissionError as e:
        yield Check("audit log", "fail", f"cannot read it: {e} (run as the broker's user)")
        return
    if report.ok:
        yield Check(
            "audit log",
            "pass",
            f"{report.entries} entries, {report.checkpoints} checkpoints verify",
        )
    else:
        yield Check("audit log", "fail", "; ".join(report.problems[:3]))


def software_checks(config_path: Path | None, state_dir: Path) -> list[Check]:
    checks = list(_imports())
    config, check = load_config(config_path, state_dir)
    checks.append(check)
    for part in (lambda: _policy(config), _models, lambda: _audit(config)):
        checks.extend(_guarded(part))
    return checks


def _guarded(part: Callable[[], Iterator[Check]]) -> list[Check]:
    """A check that crashes is a failed check, not a crashed self-test."""
    out: list[Check] = []
    try:
        out.extend(part())
    except Exception as e:  # noqa: BLE001
        out.append(Check(getattr(part, "__name__", "check"), "fail", f"{type(e).__name__}: {e}"))
    return out


# ---------------------------------------------------------------------- hardware
def _broker_running(config: Any) -> Iterator[Check]:
    from appliance.approval import BrokerNotRunning, ControlClient
    from appliance.errors import ApplianceError

    try:
        ControlClient(config.control_socket, timeout=2).call("status")
    except BrokerNotRunning:
        yield Check("broker stopped", "pass", "the panel's pins are free")
        return
    except ApplianceError:
        yield Check("broker stopped", "pass", "nothing answers on the control socket")
        return
    yield Check(
        "broker stopped",
        "fail",
        "the broker is running and owns the button and LED: "
        "`systemctl stop appliance-broker`, then run the self-test again",
    )


def _panel(config: Any, ask: Callable[[str], None], press_timeout_s: float) -> Iterator[Check]:
    from appliance.approval.gpio import open_devices

    try:
        devices = open_devices(config.panel)
    except Exception as e:  # noqa: BLE001 - no GPIO chip, pin busy, no lgpio
        yield Check("button and LED", "fail", f"cannot open the pins: {type(e).__name__}: {e}")
        return
    try:
        where = (
            f"button GPIO{config.panel.button_pin}, LED GPIO{config.panel.led_pin}"
            + (f", RGB LED GPIO{'/'.join(map(str, config.panel.rgb_pins))}" if devices.rgb else "")
            + f" ({type(devices.button.pin_factory).__name__})"
        )
        devices.blink()
        ask(
            f"The LED is blinking. If you see it, press the button once "
            f"(within {press_timeout_s:g} s)."
        )
        pressed = devices.button.wait_for_press(timeout=press_timeout_s)
        devices.off()
        if pressed:
            yield Check("button and LED", "pass", f"LED seen and button pressed: {where}")
        else:
            yield Check(
                "button and LED",
                "fail",
                f"no press within {press_timeout_s:g} s ({where}): check the LED's and the "
                "button's wiring (hardware/wiring.svg)",
            )
    finally:
        devices.close()


def _tpm(config: Any) -> Iterator[Check]:
    from appliance.issuer.choose import DEVICE_TCTI
    from appliance.issuer.tpm import Tpm

    tcti = config.tpm_tcti or DEVICE_TCTI
    if tcti.startswith("device:") and not Path(tcti.split(":", 1)[1]).exists():
        yield Check(
            "TPM",
            "fail",
            f"{tcti.split(':', 1)[1]} does not exist: is the TPM module seated and "
            "dtoverlay=tpm-slb9670 in config.txt? (hardware/tpm.md)",
        )
        return
    tpm = Tpm(tcti)
    try:
        st = tpm.status()
    finally:
        tpm.close()
    if not st["reachable"]:
        yield Check("TPM", "fail", st["reason"])
    elif st.get("in_lockout"):
        yield Check("TPM", "fail", f"in dictionary-attack lockout ({tcti}); see docs/tpm.md")
    else:
        yield Check("TPM", "pass", f"{st.get('manufacturer', '?')} answers on {tcti}")


def _hailo() -> Iterator[Check]:
    if not HAILO_DEVICE.exists():
        yield Check(
            "Hailo device",
            "fail",
            f"{HAILO_DEVICE} does not exist: is the AI HAT+ 2 on the PCIe ribbon and "
            "hailo-h10-all installed?",
        )
    else:
        yield Check("Hailo device", "pass", str(HAILO_DEVICE))
    try:
        importlib.import_module("hailo_platform")
    except Exception as e:  # noqa: BLE001
        yield Check(
            "Hailo runtime",
            "fail",
            f"hailo_platform does not import ({type(e).__name__}: {e}); "
            "install Hailo's packages (hailo-h10-all)",
        )
    else:
        yield Check("Hailo runtime", "pass", "hailo_platform imports")


def _model_installed(software: list[Check]) -> Iterator[Check]:
    """On the box a model must be there (the software rows hashed them)."""
    good = [
        c.name.removeprefix("model ")
        for c in software
        if c.name.startswith("model ") and c.name != "model manifests" and c.result == "pass"
    ]
    if good:
        yield Check("model installed", "pass", ", ".join(good))
    else:
        yield Check(
            "model installed",
            "fail",
            "no model file is installed and matches its manifest (see the model rows above)",
        )


def hardware_checks(
    config: Any,
    *,
    ask: Callable[[str], None],
    press_timeout_s: float = PRESS_TIMEOUT_S,
    software: list[Check] | None = None,
) -> list[Check]:
    checks = _guarded(lambda: _broker_running(config))
    if checks[-1].result == "pass":
        checks += _guarded(lambda: _panel(config, ask, press_timeout_s))
    checks += _guarded(lambda: _tpm(config))
    checks += _guarded(_hailo)
    checks += _guarded(lambda: _model_installed(software or []))
    return checks


# ---------------------------------------------------------------------- output
def run(
    *,
    config_path: Path | None,
    state_dir: Path,
    hardware: bool,
    ask: Callable[[str], None] | None = None,
    press_timeout_s: float = PRESS_TIMEOUT_S,
) -> list[Check]:
    checks = software_checks(config_path, state_dir)
    if hardware:
        config, _ = load_config(config_path, state_dir)
        checks += hardware_checks(
            config,
            ask=ask or (lambda text: print(text, file=sys.stderr, flush=True)),
            press_timeout_s=press_timeout_s,
            software=checks,
        )
    return checks


def table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'check':<{width}}  result  detail"]
    lines += [f"{c.name:<{width}}  {c.result.upper():<6}  {c.detail}" for c in checks]
    failed = sum(c.result == "fail" for c in checks)
    lines.append(
        "self-test passed" if not failed else f"self-test FAILED: {failed} check(s) failed"
    )
    return "\n".join(lines)


def as_json(checks: list[Check]) -> str:
    return json.dumps(
        {
            "ok": not any(c.result == "fail" for c in checks),
            "checks": [asdict(c) for c in checks],
        },
        indent=2,
    )
