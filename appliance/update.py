"""``appliance update``: install a signed update into the other slot, try it
once, and keep it only when it runs.

    appliance update install BUNDLE [--no-reboot]   (the owner, as root, at the console)
    appliance update mark-good                      (appliance-mark-good.service, every boot)

``install`` checks the bundle's signature against the box's keyring, has
RAUC write the slot that is not running (RAUC checks the signature again and
reads the payload through dm-verity), checks that the tryboot backend now
names that slot for one trial boot, and reboots with the Pi 5 firmware's
tryboot flag (``reboot "0 tryboot"``): the firmware boots the new slot once,
and any later boot without the flag is the last good slot.

``mark-good`` waits until the broker answers on its control socket and the
agent on its socket (its model verified and loaded), then runs ``rauc status
mark-good``: the tryboot backend makes the booted slot the one the firmware
boots. A trial boot that does not get there within the time is marked bad
and rebooted without the flag, into the last good slot; on an ordinary boot
the failure is only reported (no reboot loop).

This is an owner's command, never the broker's: the broker runs no external
program (tests/deploy/test_units.py keeps it so). The programs run here,
``rauc`` and ``systemctl``, go through one seam, :class:`System`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from appliance.errors import ApplianceError

KEYRING = Path("/etc/rauc/keyring.pem")
# The tryboot backend's folder (image-build/rauc/tryboot-backend).
TRYBOOT_STATE = Path("/data/rauc")
CMDLINE = Path("/proc/cmdline")
DEFAULT_CONFIG = Path("/etc/appliance/appliance.toml")
MARK_GOOD_TIMEOUT_S = 600.0
POLL_S = 5.0


class UpdateError(ApplianceError):
    """An update step that did not happen; the reason says which and why."""


class System(Protocol):
    """The programs an update runs (``rauc``, ``systemctl``)."""

    def run(self, argv: list[str]) -> tuple[int, str]:
        """Exit status and output (stdout, then stderr) of ``argv``."""
        ...


class RealSystem:
    def run(self, argv: list[str]) -> tuple[int, str]:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        except FileNotFoundError:
            return 127, f"{argv[0]} is not installed"
        return proc.returncode, (proc.stdout + proc.stderr).strip()


@dataclass(frozen=True)
class Slots:
    """Where the tryboot backend and the kernel say which slot is which."""

    state: Path = TRYBOOT_STATE
    cmdline: Path = CMDLINE

    def booted(self) -> str:
        for word in self.cmdline.read_text().split():
            if word.startswith("rauc.slot="):
                slot = word.removeprefix("rauc.slot=")
                if slot in ("A", "B"):
                    return slot
        raise UpdateError(f"{self.cmdline} names no slot (rauc.slot=A or B): not an A/B boot")

    def pending(self) -> str | None:
        """The slot installed and waiting for (or in) its trial boot."""
        try:
            value = (self.state / "pending").read_text().strip()
        except FileNotFoundError:
            return None
        return value or None

    def on_trial(self) -> bool:
        return self.pending() == self.booted()


def install(
    bundle: Path,
    *,
    system: System,
    slots: Slots,
    reboot: bool = True,
    keyring: Path = KEYRING,
    say: Callable[[str], None] = print,
) -> str:
    """Install ``bundle`` into the other slot and (unless ``reboot`` is
    False) reboot into it once. Returns the slot written."""
    if not bundle.is_file():
        raise UpdateError(f"no update bundle at {bundle}")
    booted = slots.booted()
    target = "B" if booted == "A" else "A"
    rc, out = system.run(
        ["rauc", "info", f"--keyring={keyring}", "--output-format=json", str(bundle)]
    )
    if rc != 0:
        raise UpdateError(f"the bundle does not verify against {keyring}: {out}")
    try:
        version = str(json.loads(out.splitlines()[-1]).get("version", "?"))
    except (ValueError, IndexError, AttributeError):
        version = "?"
    say(f"bundle {bundle.name}: version {version}, signature verified; writing slot {target}")
    rc, out = system.run(["rauc", "install", str(bundle)])
    if rc != 0:
        raise UpdateError(f"rauc install failed; nothing was switched: {out}")
    if slots.pending() != target:
        raise UpdateError(
            f"RAUC installed the bundle but slot {target} is not waiting for its trial boot "
            f"({slots.state / 'pending'}); not rebooting"
        )
    command = ["systemctl", "reboot", "0 tryboot"]
    if not reboot:
        say(f"slot {target} is ready for one trial boot: {' '.join(command[:2])} '0 tryboot'")
        return target
    say(f"rebooting into slot {target} once (tryboot); it is kept once it runs")
    rc, out = system.run(command)
    if rc != 0:
        raise UpdateError(f"the tryboot reboot failed: {out}")
    return target


def _agent_answers(path: Path, agent_uid: int | None, timeout_s: float) -> str | None:
    """None when the agent answers on ``path``; else why not. The agent
    answers only the broker's uid: refusing this process (root) counts, as
    the agent binds its socket only after its model is verified and loaded."""
    from appliance.agent.protocol import encode, peer_of, read_line

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(str(path))
        uid = peer_of(sock).uid
        if agent_uid is not None and uid != agent_uid:
            return f"the process on {path} runs as uid {uid}, not the agent's {agent_uid}"
        # The agent answers a refused peer at once and closes: its answer is
        # still there to read after a failed send.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(encode({"op": "health"}))
        line = read_line(sock, 1 << 20)
    except OSError as e:
        return f"the agent does not answer on {path}: {e}"
    finally:
        sock.close()
    try:
        answer: Any = json.loads(line or b"")
    except ValueError:
        return "the agent's answer is not JSON"
    if not isinstance(answer, dict):
        return "the agent's answer is not an object"
    error = answer.get("error")
    refused = isinstance(error, dict) and error.get("code") == "forbidden_peer"
    if answer.get("ok") is True or refused:
        return None
    return f"the agent answers with an error: {error}"


def health(config: Any, timeout_s: float = 10.0) -> str | None:
    """None when the broker and the agent both answer; else the first reason."""
    from appliance.approval import ControlClient

    try:
        ControlClient(config.control_socket, timeout=timeout_s).call("status")
    except ApplianceError as e:
        return f"the broker does not answer: {e.reason}"
    return _agent_answers(config.agent_socket_path, config.agent_uid, timeout_s)


def mark_good(
    *,
    system: System,
    slots: Slots,
    check: Callable[[], str | None],
    timeout_s: float = MARK_GOOD_TIMEOUT_S,
    poll_s: float = POLL_S,
    say: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Mark the booted slot good once ``check`` passes; see the module docstring.
    True when marked good; False when not (after falling back on a trial boot)."""
    booted, trial = slots.booted(), slots.on_trial()
    deadline = clock() + timeout_s
    why = check()
    while why is not None and clock() < deadline:
        sleep(poll_s)
        why = check()
    if why is None:
        rc, out = system.run(["rauc", "status", "mark-good"])
        if rc != 0:
            raise UpdateError(f"rauc status mark-good failed: {out}")
        say(f"slot {booted} is good ({'trial boot kept' if trial else 'already the boot slot'})")
        return True
    if not trial:
        say(f"slot {booted} is not healthy after {timeout_s:g} s ({why}); not a trial boot, "
            "so nothing to fall back to")  # fmt: skip
        return False
    say(f"trial boot of slot {booted} is not healthy after {timeout_s:g} s ({why}): "
        "marking it bad and rebooting into the last good slot")  # fmt: skip
    rc, out = system.run(["rauc", "status", "mark-bad"])
    if rc != 0:
        say(f"rauc status mark-bad failed ({out}); rebooting anyway")
    # No tryboot flag: the firmware boots the last good slot ([all] in autoboot.txt).
    rc, out = system.run(["systemctl", "reboot"])
    if rc != 0:
        raise UpdateError(f"the reboot into the last good slot failed: {out}")
    return False


# ---------------------------------------------------------------------- CLI
def register(sub: Any) -> None:
    """Add ``update`` to the ``appliance`` command line (``sub``: its subparsers)."""
    update = sub.add_parser("update", help="install a signed update and try it (A/B, tryboot)")
    update_sub = update.add_subparsers(dest="update_command", required=True)
    inst = update_sub.add_parser(
        "install", help="verify BUNDLE, write the other slot, reboot into it once"
    )
    inst.add_argument("bundle", type=Path)
    inst.add_argument("--no-reboot", action="store_true", help="install only; reboot later")
    good = update_sub.add_parser(
        "mark-good",
        help="at boot: keep this slot once the broker and agent answer (a failed trial "
        "boot falls back)",
    )
    good.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    good.add_argument("--timeout", type=float, default=MARK_GOOD_TIMEOUT_S, help="seconds")
    update.set_defaults(func=run)


def run(args: argparse.Namespace, out: object = None) -> int:
    """``appliance update``; ``out`` (the CLI's printer) is not used: it prints
    what it does as it goes."""
    if os.geteuid() != 0:
        print("appliance update: run as root (RAUC writes the slots)", file=sys.stderr)
        return 1
    system, slots = RealSystem(), Slots()
    if args.update_command == "install":
        install(args.bundle, system=system, slots=slots, reboot=not args.no_reboot)
        return 0
    from appliance.config import Config, load_toml

    config = Config(**load_toml(args.config))
    ok = mark_good(system=system, slots=slots, check=lambda: health(config), timeout_s=args.timeout)
    return 0 if ok else 1
