"""``appliance selftest``: can this box run, and what is missing?

Software checks (always): the Python packages import, the configuration
parses, the Cedar policies compile and pass their own cases, the model
manifests parse, each model file that is present matches its sha256, and the
audit log verifies if the state directory has one. A fresh install with no
state, no TPM and no model file passes: what is absent and optional is
``skip``, what is broken is ``fail``.

Hardware checks (``--hardware``, on the box with the broker stopped): the LED
blinks and a person confirms by pressing the button, the TPM answers and is
not in lockout, the Hailo device node is there (``/dev/hailo0``, or
``/dev/h1x-0`` with hailort-drivers 5.3), its kernel module is loaded and its
runtime imports at the pinned HailoRT version, the agent's HEF is there with
its hash, the watchdog is armed, this slot is marked good, and ``/`` is
mounted read-write. Each row says what it found (docs/image.md, hardware/bringup.md).

Exit status 0 when nothing failed, 1 otherwise.
"""

from __future__ import annotations

import dataclasses
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
# The box's file system, as the hardware rows read it (tests point it elsewhere).
ROOT = Path("/")
# HailoRT 5.1's driver makes /dev/hailo0; hailort-drivers 5.3 makes /dev/h1x-0.
HAILO_DEVICES = ("dev/hailo0", "dev/h1x-0")
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
    "lgpio",
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
OPTIONAL = {
    "llama_cpp": "the CPU model backend (extra 'cpu'); the Hailo backend needs none",
    "lgpio": "the Pi 5's GPIO (extra 'pi')",
}


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
    yield from _agent_manifest()
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


def _agent_manifest() -> Iterator[Check]:
    """Which manifest the agent loads (its sha256 is checked before loading):
    agent.env's AGENT_MODEL on the box, else the development default."""
    from appliance.agent.models import default_manifest_path, load_manifest

    configured = _agent_env_model()
    path = ROOT / configured.lstrip("/") if configured else default_manifest_path()
    where = "agent.env's AGENT_MODEL" if configured else "the development default"
    try:
        m = load_manifest(path)
    except Exception as e:  # noqa: BLE001 - a broken manifest is a failed row
        yield Check("agent's model", "fail", f"{path} ({where}): {e}")
        return
    yield Check("agent's model", "pass", f"{m.name} ({where}; {m.backend}), sha256 {m.sha256}")


def _agent_env_model() -> str | None:
    env = ROOT / "etc/appliance/agent.env"
    if not env.is_file():
        return None
    for line in env.read_text().splitlines():
        key, _, value = line.strip().partition("=")
        if key == "AGENT_MODEL" and value.strip():
            return value.strip()
    return None


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


def _pinned_hailort() -> str | None:
    """The HailoRT version the image holds (image-build/hailo.toml, installed)."""
    import tomllib

    try:
        return str(tomllib.loads((ROOT / "usr/share/appliance/hailo.toml").read_text())["hailort"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return None


def _hailo() -> Iterator[Check]:
    nodes = [ROOT / n for n in HAILO_DEVICES]
    present = [f"/{n.relative_to(ROOT)}" for n in nodes if n.exists()]
    if present:
        yield Check("Hailo device", "pass", ", ".join(present))
    else:
        yield Check(
            "Hailo device",
            "fail",
            "neither /dev/hailo0 nor /dev/h1x-0 exists: is the AI HAT+ 2 on the PCIe ribbon "
            "and its driver loaded (see the Hailo module row; dmesg | grep -i hailo)?",
        )
    try:
        modules = (ROOT / "proc/modules").read_text().splitlines()
    except OSError as e:
        modules, why = [], str(e)
    else:
        why = "no hailo* module in /proc/modules"
    loaded = [line.split()[0] for line in modules if line.startswith("hailo")]
    if loaded:
        yield Check("Hailo module", "pass", ", ".join(loaded))
    else:
        yield Check("Hailo module", "fail", f"{why}: was it built by DKMS for this kernel?")
    pinned = _pinned_hailort()
    try:
        platform = importlib.import_module("hailo_platform")
        importlib.import_module("hailo_platform.genai")
    except Exception as e:  # noqa: BLE001
        yield Check(
            "Hailo runtime",
            "fail",
            f"hailo_platform.genai does not import ({type(e).__name__}: {e}); the venv sees "
            "it from python3-h10-hailort through appliance-system-packages.pth",
        )
        return
    version = str(getattr(platform, "__version__", "?"))
    if pinned is not None and version != pinned:
        yield Check(
            "Hailo runtime",
            "fail",
            f"hailo_platform {version}, but the image's HEFs are for HailoRT {pinned}",
        )
    else:
        yield Check("Hailo runtime", "pass", f"hailo_platform {version} imports (genai)")


def _agent_model() -> Iterator[Check]:
    """The model the agent runs (agent.env's AGENT_MODEL): file present, hash right."""
    from appliance.agent.errors import ModelError
    from appliance.agent.models import load_manifest, verify

    model = _agent_env_model()
    if not model:
        yield Check(
            "agent model", "fail", f"{ROOT / 'etc/appliance/agent.env'} names no AGENT_MODEL"
        )
        return
    try:
        manifest = load_manifest(ROOT / model.lstrip("/"))
        if manifest.file.startswith("/"):  # the HEF, inside ROOT
            manifest = dataclasses.replace(manifest, file=str(ROOT / manifest.file.lstrip("/")))
        path = verify(manifest)
    except ModelError as e:
        yield Check("agent model", "fail", e.reason)
        return
    yield Check("agent model", "pass", f"{path} sha256 {manifest.sha256}")


def _watchdog() -> Iterator[Check]:
    import re

    armed = []
    for folder in ("etc/systemd/system.conf.d", "usr/lib/systemd/system.conf.d"):
        for conf in sorted((ROOT / folder).glob("*.conf")):
            m = re.search(r"^RuntimeWatchdogSec=(\S+)", conf.read_text(), re.M)
            if m and m.group(1) not in ("0", "off"):
                armed.append(f"RuntimeWatchdogSec={m.group(1)}")
    device = ROOT / "dev/watchdog0"
    state_file = ROOT / "sys/class/watchdog/watchdog0/state"
    state = state_file.read_text().strip() if state_file.is_file() else "unknown"
    if not armed:
        yield Check("watchdog", "fail", "no system.conf.d drop-in sets RuntimeWatchdogSec")
    elif not device.exists():
        yield Check("watchdog", "fail", "/dev/watchdog0 does not exist")
    elif state not in ("active", "unknown"):
        yield Check("watchdog", "fail", f"/dev/watchdog0 is {state}: systemd is not petting it")
    else:
        yield Check("watchdog", "pass", f"/dev/watchdog0 {state}; {armed[-1]}")


def _mark_good() -> Iterator[Check]:
    from appliance.update import Slots, UpdateError

    unit = ROOT / "etc/systemd/system/multi-user.target.wants/appliance-mark-good.service"
    if not (unit.is_symlink() or unit.exists()):
        yield Check("mark-good", "fail", "appliance-mark-good.service is not enabled")
        return
    slots = Slots(state=ROOT / "data/rauc", cmdline=ROOT / "proc/cmdline")
    try:
        booted, pending = slots.booted(), slots.pending()
    except (UpdateError, OSError) as e:
        yield Check("mark-good", "fail", str(e))
        return
    if pending == booted:
        yield Check(
            "mark-good",
            "fail",
            f"slot {booted} is on its trial boot and not marked good yet "
            "(journalctl -u appliance-mark-good)",
        )
    else:
        waiting = f"; slot {pending} waits for its trial boot" if pending else ""
        yield Check("mark-good", "pass", f"booted slot {booted} is good{waiting}")


def _root_rw() -> Iterator[Check]:
    options = None
    for line in (ROOT / "proc/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[1] == "/":
            options = fields[3].split(",")  # the last mount on / is the one in force
    if options is None:
        yield Check("root read-write", "fail", "/ is not in /proc/mounts")
    elif "rw" in options:
        yield Check("root read-write", "pass", "/ is mounted rw")
    else:
        yield Check("root read-write", "fail", "/ is mounted read-only (cmdline.txt rw, fstab)")


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
    for part in (_agent_model, _watchdog, _mark_good, _root_rw):
        checks += _guarded(part)
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
