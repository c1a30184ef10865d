#!/usr/bin/env python3
"""Every assumption the first boot makes, checked in the built image's root
and boot folders before they become an image.

    bootcheck.py --root ROOT --boot BOOT [--hef required|declared] [--modules standin]

Each check is a function of the staged folders that returns what it found or
raises :class:`CheckFailed` saying what is wrong. Run by the Pi image recipe
(``--hef required``: the HEF must be on the image) and by ``make
image-check`` (``--hef declared``: no Hailo model store here, so the HEF's
path and hash must be declared and pinned, not present). The tests run each
check against broken copies of a staged root (tests/deploy/test_firstboot.py).
"""

from __future__ import annotations

import argparse
import configparser
import os
import re
import stat
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hailo import HailoError, declared_hef, load_pin, sha256_file  # noqa: E402

VENV = "opt/appliance"
DIST = "/usr/lib/python3/dist-packages"
UNITS = "usr/lib/systemd/system"
WANTS = "etc/systemd/system/multi-user.target.wants"
HEF_DIR = "/usr/local/hailo/resources/models/hailo10h/"


class CheckFailed(Exception):
    pass


@dataclass(frozen=True)
class Staged:
    root: Path  # the root file system (what becomes rootA)
    boot: Path  # the boot partition's files (what becomes bootA)


def _unit(t: Staged, name: str) -> dict[str, list[str]]:
    """A unit's keys (all sections together), each with its values in order."""
    path = t.root / UNITS / name
    if not path.is_file():
        raise CheckFailed(f"/{UNITS}/{name} is not installed")
    out: dict[str, list[str]] = {}
    for line in path.read_text().replace("\\\n", " ").splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def _enabled(t: Staged, name: str) -> None:
    if not (t.root / WANTS / name).is_symlink():
        raise CheckFailed(f"{name} is not enabled (no /{WANTS}/{name})")


# ---------------------------------------------------------------------- 1
def venv_sees_hailo_platform(t: Staged) -> str:
    """The agent's venv can import HailoRT's package from the Debian package."""
    installed = t.root / DIST.lstrip("/") / "hailo_platform"
    if not (installed / "__init__.py").is_file():
        raise CheckFailed(f"{DIST}/hailo_platform is not installed (python3-h10-hailort)")
    sites = sorted((t.root / VENV).glob("lib/python3*/site-packages"))
    if not sites:
        raise CheckFailed(f"no venv at /{VENV}")
    cfg = (t.root / VENV / "pyvenv.cfg").read_text()
    if re.search(r"^include-system-site-packages\s*=\s*true", cfg, re.M):
        return "the venv sees all of the system's packages (include-system-site-packages)"
    for pth in sites[0].glob("*.pth"):
        for line in pth.read_text().splitlines():
            folder = line.strip()
            if not folder.startswith("/") or line.startswith(("#", "import")):
                continue
            link = t.root / folder.lstrip("/") / "hailo_platform"
            if link.is_symlink() and os.readlink(link) == f"{DIST}/hailo_platform":
                return f"{pth.name} exposes {DIST}/hailo_platform only, via {folder}"
    raise CheckFailed(
        f"the venv /{VENV} cannot import hailo_platform: it is in {DIST} (the Debian "
        "package) and no .pth of the venv names it; the agent would exit at start"
    )


# ---------------------------------------------------------------------- 2, 3
def _agent_hef(t: Staged) -> tuple[Path, str, str, str]:
    """(path in ROOT, path on the box, sha256, HailoRT version) of the agent's HEF."""
    pin = load_pin(t.root / "usr/share/appliance/hailo.toml")
    try:
        path, sha = declared_hef(t.root, pin)
    except HailoError as e:
        raise CheckFailed(str(e)) from None
    return path, "/" + str(path.relative_to(t.root)), sha, pin.hailort


def agent_hef_declared(t: Staged) -> str:
    """The agent's model is a HEF whose path and sha256 are the pinned version's."""
    _, where, sha, hailort = _agent_hef(t)
    if not where.startswith(HEF_DIR):
        raise CheckFailed(f"the agent's HEF {where} is not under {HEF_DIR}")
    unit = _unit(t, "appliance-agent.service")
    if not any("--model ${AGENT_MODEL}" in v for v in unit.get("ExecStart", [])):
        raise CheckFailed("appliance-agent.service does not run the model agent.env names")
    return f"{where}, sha256 {sha} (HailoRT {hailort})"


def agent_hef_installed(t: Staged) -> str:
    """The agent's HEF is on the image, root's, read-only, with its hash."""
    path, where, sha, _ = _agent_hef(t)
    if not path.is_file():
        raise CheckFailed(f"the agent's HEF {where} is not on the image (hailo.py fetch)")
    st = path.stat()
    if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CheckFailed(f"{where} may be changed by others than root")
    got = sha256_file(path)
    if got != sha:
        raise CheckFailed(f"{where} has sha256 {got}, its manifest {sha}")
    return f"{where} present, sha256 {sha}"


def manifests_pinned(t: Staged) -> str:
    """Every Hailo manifest records the pinned version's HEF name and hash."""
    pin = load_pin(t.root / "usr/share/appliance/hailo.toml")
    digests = set(pin.hefs.values())
    checked, unpublished = 0, []
    for path in sorted((t.root / "usr/share/appliance/models").glob("*.toml")):
        m = tomllib.loads(path.read_text())
        sha, file = str(m.get("sha256", "")), str(m.get("file", ""))
        if m.get("backend") == "ollama" and sha:
            if sha not in digests:
                raise CheckFailed(f"{path.name}: sha256 {sha} is no HailoRT {pin.hailort} HEF")
            checked += 1
        elif m.get("backend") == "hailo":
            name = Path(file).name
            if not sha:
                if name in pin.hefs:
                    raise CheckFailed(f"{path.name}: {name} is published; record its sha256")
                unpublished.append(path.name)
            elif name not in pin.hefs:
                raise CheckFailed(
                    f"{path.name}: no HEF named {name} in Model Zoo GenAI {pin.hailort}"
                )
            elif sha != pin.hefs[name]:
                raise CheckFailed(
                    f"{path.name}: sha256 {sha} is not {name} of HailoRT {pin.hailort} "
                    f"({pin.hefs[name]})"
                )
            else:
                checked += 1
    note = f"; refused for want of a HEF: {', '.join(unpublished)}" if unpublished else ""
    return f"{checked} manifests carry HailoRT {pin.hailort}'s HEF hashes{note}"


def hailo_packages_held(t: Staged) -> str:
    """The Hailo packages are installed at the pinned version and held there."""
    pin = load_pin(t.root / "usr/share/appliance/hailo.toml")
    status = (t.root / "var/lib/dpkg/status").read_text()
    found = {}
    for block in status.split("\n\n"):
        fields = dict(
            (k, v.strip()) for k, _, v in (ln.partition(":") for ln in block.splitlines()) if k
        )
        if fields.get("Package") in pin.packages:
            found[fields["Package"]] = (fields.get("Status", ""), fields.get("Version", ""))
    for needed in ("h10-hailort", "h10-hailort-pcie-driver", "python3-h10-hailort"):
        if needed not in found:
            raise CheckFailed(f"{needed} is not installed")
    for name, (state, version) in sorted(found.items()):
        if not version.startswith(pin.hailort):
            raise CheckFailed(f"{name} is {version}, not HailoRT {pin.hailort}")
        if not state.startswith("hold "):
            raise CheckFailed(f"{name} is not held ({state}): an upgrade could move it alone")
    return ", ".join(f"{n} {v[1]}" for n, v in sorted(found.items())) + ", held"


def hailo_module_built(t: Staged) -> str:
    """DKMS built the Hailo kernel module, and it survived the strip."""
    found = sorted(p for p in (t.root / "usr/lib/modules").rglob("hailo*.ko*"))
    if not found:
        raise CheckFailed("no hailo*.ko under /usr/lib/modules: no driver for /dev/hailo0")
    return ", ".join("/" + str(p.relative_to(t.root)) for p in found)


def agent_unit_for_hailo(t: Staged) -> str:
    """The agent may open either device node, and HailoRT writes no log files."""
    unit = _unit(t, "appliance-agent.service")
    allowed = {v.split()[0] for v in unit.get("DeviceAllow", [])}
    missing = {"/dev/hailo0", "/dev/h1x-0"} - allowed
    if missing:
        raise CheckFailed(f"appliance-agent.service's DeviceAllow lacks {', '.join(missing)}")
    if "HAILORT_LOGGER_PATH=NONE" not in unit.get("Environment", []):
        raise CheckFailed(
            "appliance-agent.service lacks Environment=HAILORT_LOGGER_PATH=NONE: HailoRT "
            "would try to write logs where ProtectSystem=strict forbids"
        )
    return "DeviceAllow /dev/hailo0 and /dev/h1x-0; HAILORT_LOGGER_PATH=NONE"


# ---------------------------------------------------------------------- 5
def overlays_present(t: Staged) -> str:
    """Every dtoverlay= in config.txt has its .dtbo on the boot partition."""
    config = (t.boot / "config.txt").read_text()
    names = re.findall(r"^\s*dtoverlay=([^,:\s]+)", config, re.M)
    missing = [n for n in names if not (t.boot / "overlays" / f"{n}.dtbo").is_file()]
    if missing:
        raise CheckFailed(
            "config.txt loads overlays the boot partition lacks: "
            + ", ".join(f"overlays/{n}.dtbo" for n in missing)
        )
    return f"{len(names)} overlays, each with its .dtbo: {', '.join(names)}"


# ---------------------------------------------------------------------- 6
def root_read_write(t: Staged) -> str:
    """The kernel mounts / read-write and fstab keeps it so."""
    cmdline = (t.boot / "cmdline.txt").read_text().split()
    if "rw" not in cmdline or "ro" in cmdline:
        raise CheckFailed(f"cmdline.txt does not mount the root read-write: {' '.join(cmdline)}")
    root = next((w for w in cmdline if w.startswith("root=")), "")
    for line in (t.root / "etc/fstab").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 4 and not line.startswith("#") and fields[1] == "/":
            if "ro" in fields[3].split(","):
                raise CheckFailed(f"/etc/fstab mounts / read-only: {line}")
            if f"root={fields[0]}" != root:
                raise CheckFailed(f"/etc/fstab's / ({fields[0]}) is not cmdline.txt's {root}")
            return f"cmdline.txt: {root} rw; fstab: {fields[0]} / {fields[3]}"
    raise CheckFailed("/etc/fstab has no line for /")


# ---------------------------------------------------------------------- 7
def updates_made_permanent(t: Staged) -> str:
    """A unit marks the booted slot good after the broker and agent, and the
    update command that reboots into the trial slot is there."""
    unit = _unit(t, "appliance-mark-good.service")
    _enabled(t, "appliance-mark-good.service")
    after = " ".join(unit.get("After", [])).split()
    if not {"appliance-broker.service", "appliance-agent.service"} <= set(after):
        raise CheckFailed("appliance-mark-good.service does not run after the broker and agent")
    if not any("appliance update mark-good" in v for v in unit.get("ExecStart", [])):
        raise CheckFailed("appliance-mark-good.service does not run `appliance update mark-good`")
    conf = configparser.ConfigParser()
    conf.read_string((t.root / "etc/rauc/system.conf").read_text())
    backend = conf.get("handlers", "bootloader-custom-backend", fallback="")
    if (
        conf.get("system", "bootloader", fallback="") != "custom"
        or not (t.root / backend.lstrip("/")).is_file()
    ):
        raise CheckFailed("RAUC has no tryboot backend (system.conf bootloader=custom)")
    update = t.root / VENV / "lib"
    if not any(update.glob("python3*/site-packages/appliance/update.py")):
        raise CheckFailed("the installed appliance has no `appliance update`")
    return "appliance-mark-good.service enabled after broker and agent; tryboot backend; update"


# ---------------------------------------------------------------------- 8
def watchdog_armed(t: Staged) -> str:
    """systemd arms the hardware watchdog; config.txt sets nothing the Pi 5 lacks."""
    config = (t.boot / "config.txt").read_text()
    if re.search(r"^\s*dtparam=watchdog", config, re.M):
        raise CheckFailed("config.txt sets dtparam=watchdog, which is not a Pi 5 parameter")
    found = []
    for folder in ("etc/systemd/system.conf.d", "usr/lib/systemd/system.conf.d"):
        for conf in sorted((t.root / folder).glob("*.conf")):
            m = re.search(r"^RuntimeWatchdogSec=(\S+)", conf.read_text(), re.M)
            if m and m.group(1) not in ("0", "off", "infinity"):
                found.append(f"/{folder}/{conf.name}: RuntimeWatchdogSec={m.group(1)}")
    if not found:
        raise CheckFailed("no system.conf.d drop-in sets RuntimeWatchdogSec: the watchdog is idle")
    return "; ".join(found)


CHECKS: dict[str, Callable[[Staged], str]] = {
    "venv sees hailo_platform": venv_sees_hailo_platform,
    "agent HEF declared": agent_hef_declared,
    "agent HEF installed": agent_hef_installed,
    "manifests pinned": manifests_pinned,
    "Hailo packages held": hailo_packages_held,
    "Hailo module built": hailo_module_built,
    "agent unit for Hailo": agent_unit_for_hailo,
    "overlays present": overlays_present,
    "root read-write": root_read_write,
    "updates made permanent": updates_made_permanent,
    "watchdog armed": watchdog_armed,
}


def run(t: Staged, *, hef_required: bool) -> tuple[list[str], list[str]]:
    """(passed, failed) lines for every check."""
    ok, bad = [], []
    for name, check in CHECKS.items():
        if check is agent_hef_installed and not hef_required:
            ok.append(f"{name}: not here (no Hailo model store); the Pi build requires it")
            continue
        try:
            ok.append(f"{name}: {check(t)}")
        except (CheckFailed, OSError, KeyError, ValueError) as e:
            bad.append(f"{name}: {e}")
    return ok, bad


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--boot", type=Path, required=True)
    p.add_argument("--hef", choices=["required", "declared"], default="required")
    args = p.parse_args(argv)
    ok, bad = run(Staged(args.root, args.boot), hef_required=args.hef == "required")
    for line in ok:
        print(f"ok: {line}")
    for line in bad:
        print(f"FAILED: {line}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
