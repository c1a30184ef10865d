"""The approval panel seam: what the person at the box sees and presses.

A panel is told two things by the queue: which request is shown
(:meth:`Panel.show`, ``None`` when nothing is) and what the LED should say
(:meth:`Panel.indicate`). Presses travel the other way: a panel calls the
queue it was connected to (:meth:`Panel.connect`); it never decides
anything itself.

:class:`Panel` is the base of every panel and names every ability one may
have, with a safe default where a panel lacks it (the way gpiozero's pin
``Factory`` does): no fault light, nothing to close, no presses from the
control socket. The broker calls these and never asks which panel it has.

The queue calls ``show``/``indicate`` with its lock held, so they must be
quick and must not block on the queue from another thread (reading the
queue from the same thread is fine: its lock is re-entrant). An outcome
(``approved``/``denied``/``expired``) may be followed at once by ``pending``
for the next request: a panel that blinks outcomes does so on its own timer.

Implementations side by side:

* :class:`VirtualPanel` (here): development only. Nothing physical; the
  owner approves from the CLI (``appliance panel approve``/``deny``) or the
  local page, and it says so loudly.
* :class:`~appliance.approval.gpio.GpioPanel`: a gpiozero ``Button`` (hold
  to approve, double tap to deny, long hold while idle to open pairing) and
  an LED showing the state and the verification code; tested on gpiozero's
  ``MockFactory``, run on lgpio on the Pi 5.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections import deque
from typing import Any

from appliance.errors import ApplianceError, Unavailable

from .types import PANEL_STATES, ApprovalRequest, Decision, PanelQueue, PanelState, PressResult

log = logging.getLogger(__name__)


class Panel(ABC):
    """What the approval queue and the broker need from a panel."""

    name: str = "panel"
    virtual: bool = True  # True for anything that is not a physical button
    # A light that can show the broker's faults (TPM gone, audit log closed):
    # the broker keeps it up to date only when there is one.
    fault_light: bool = False

    def __init__(self) -> None:
        self._queue: PanelQueue | None = None

    def connect(self, queue: PanelQueue) -> None:
        """Send presses to ``queue`` (built after its panel, which it needs)."""
        self._queue = queue

    @abstractmethod
    def show(self, request: ApprovalRequest | None) -> None:
        """Display ``request`` (the one a press now applies to), or nothing."""

    @abstractmethod
    def indicate(self, state: PanelState) -> None:
        """Set the indicator (LED) to ``state``."""

    def set_fault(self, reason: str | None) -> None:
        """Show (or clear) a fault. A panel without a fault light ignores it."""
        return None

    def press(self, decision: Decision, *, digest: str, source: str = "cli") -> PressResult:
        """A press from the control socket. Only a virtual panel takes one: on
        a physical panel the button is the only way to approve."""
        raise ApplianceError(
            f"the panel is {self.name!r}: approve with its button", code="not_virtual", status=403
        )

    def snapshot(self) -> dict[str, Any]:
        """What ``appliance panel show`` and the status print."""
        return {"panel": self.name, "virtual": self.virtual}

    def close(self) -> None:
        """Release the hardware (nothing to release by default)."""
        return None


class VirtualPanel(Panel):
    """A panel with no hardware, for development: approvals come from the CLI.

    It remembers what is shown and the LED state it would display, for
    ``appliance panel show``, the status page and tests. Every approval given
    through it is logged as a warning, like every other development stand-in
    in the appliance (the software signer, the dev key store).
    """

    name = "virtual"
    virtual = True
    fault_light = True  # shown in its snapshot, as the LED would

    def __init__(self, *, history: int = 100) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._shown: ApprovalRequest | None = None
        self._state: PanelState = "idle"
        self._history: deque[str] = deque(maxlen=history)
        self._fault: str | None = None
        log.warning(
            "VIRTUAL approval panel in use: this is a development setup with no physical "
            "button; approvals are given from the CLI (`appliance panel approve` / "
            "`appliance panel deny`), so anyone who can run it as the broker's user can approve"
        )

    # -- Panel ----------------------------------------------------------------

    def show(self, request: ApprovalRequest | None) -> None:
        with self._lock:
            self._shown = request

    def indicate(self, state: PanelState) -> None:
        if state not in PANEL_STATES:
            raise ValueError(f"unknown panel state {state!r}")
        with self._lock:
            self._state = state
            self._history.append(state)

    def set_fault(self, reason: str | None) -> None:
        """The broker's health: a fault overrides what the LED shows."""
        with self._lock:
            self._fault = reason

    def press(self, decision: Decision, *, digest: str, source: str = "cli") -> PressResult:
        """Approve or deny the request whose ``digest`` the person was shown.

        The digest is required: the CLI first displays the request (summary,
        code, digest) and sends back the digest it displayed, so a request
        swapped in between cannot be approved by mistake.
        """
        if self._queue is None:
            raise Unavailable("the virtual panel is not connected to the approval queue")
        result = self._queue.press(decision, digest=digest, source=f"virtual-panel:{source}")
        if result.accepted:
            log.warning(
                "approval %s %s through the VIRTUAL panel (source %s), not a physical button",
                result.approval_id,
                result.reason,
                source,
            )
        return result

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            shown, state, fault = self._shown, self._state, self._fault
        return {
            "panel": self.name,
            "virtual": self.virtual,
            "state": "fault" if fault else state,
            "fault": fault,
            "shown": shown.to_public(position=0) if shown else None,
        }

    # -- what tests use ------------------------------------------------------------

    @property
    def shown(self) -> ApprovalRequest | None:
        with self._lock:
            return self._shown

    @property
    def state(self) -> PanelState:
        with self._lock:
            return self._state

    @property
    def history(self) -> list[str]:
        """The last states indicated, oldest first."""
        with self._lock:
            return list(self._history)
