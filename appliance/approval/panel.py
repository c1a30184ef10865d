"""The approval panel seam: what the person at the box sees and presses.

A panel is told two things by the queue: which request is shown
(:meth:`Panel.show`, ``None`` when nothing is) and what the LED should say
(:meth:`Panel.indicate`). Presses travel the other way: a panel calls the
queue's ``press(decision, digest=..., source=...)``; it never decides
anything itself.

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
  ``MockFactory``, run on lgpio on the Pi 5. It is built before the queue
  and handed the queue through ``connect`` afterwards.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from appliance.errors import Unavailable

if TYPE_CHECKING:
    from .queue import ApprovalRequest, PressResult

log = logging.getLogger(__name__)

PanelState = Literal["idle", "pending", "pairing", "approved", "denied", "expired", "fault"]
PANEL_STATES: tuple[str, ...] = PanelState.__args__  # type: ignore[attr-defined]

# The colours an RGB LED shows a pending request in, one per verification
# code: easy to name, far apart on the colour wheel.
CODE_COLOURS = ("red", "green", "blue", "yellow", "cyan", "magenta")


def code_colour(code: str) -> str:
    """The colour an RGB panel breathes in for ``code``; the requester sees
    its name beside the code (number matching with a colour)."""
    return CODE_COLOURS[int(code) % len(CODE_COLOURS)]


# The queue's press method, as a panel holds it.
PressFn = Callable[..., "PressResult"]


@runtime_checkable
class Panel(Protocol):
    """What the approval queue needs from a panel."""

    name: str
    virtual: bool  # True for anything that is not a physical button

    def show(self, request: ApprovalRequest | None) -> None:
        """Display ``request`` (the one a press now applies to), or nothing."""
        ...

    def indicate(self, state: PanelState) -> None:
        """Set the indicator (LED) to ``state``."""
        ...


class VirtualPanel:
    """A panel with no hardware, for development: approvals come from the CLI.

    It remembers what is shown and the LED state it would display, for
    ``appliance panel show``, the status page and tests. Every approval given
    through it is logged as a warning, like every other development stand-in
    in the appliance (the software signer, the dev key store).
    """

    name = "virtual"
    virtual = True

    def __init__(self, *, history: int = 100) -> None:
        self._lock = threading.Lock()
        self._shown: ApprovalRequest | None = None
        self._state: PanelState = "idle"
        self._history: deque[str] = deque(maxlen=history)
        self._press: PressFn | None = None
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

    # -- what the CLI and tests use ----------------------------------------------

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

    def set_fault(self, reason: str | None) -> None:
        """The broker's health: a fault overrides what the LED shows."""
        with self._lock:
            self._fault = reason

    def attach(self, press: PressFn) -> None:
        """Connect the panel to the queue's ``press`` (the queue is built
        after its panel, because it needs one)."""
        self._press = press

    def press(self, decision: str, *, digest: str, source: str = "cli") -> PressResult:
        """Approve or deny the request whose ``digest`` the person was shown.

        The digest is required: the CLI first displays the request (summary,
        code, digest) and sends back the digest it displayed, so a request
        swapped in between cannot be approved by mistake.
        """
        if self._press is None:
            raise Unavailable("the virtual panel is not connected to the approval queue")
        result = self._press(decision, digest=digest, source=f"virtual-panel:{source}")
        if result.accepted:
            log.warning(
                "approval %s %s through the VIRTUAL panel (source %s), not a physical button",
                result.approval_id,
                result.reason,
                source,
            )
        return result

    def snapshot(self) -> dict[str, Any]:
        """What ``appliance panel show`` prints."""
        with self._lock:
            shown, state, fault = self._shown, self._state, self._fault
        return {
            "panel": self.name,
            "virtual": self.virtual,
            "state": "fault" if fault else state,
            "fault": fault,
            "shown": shown.to_public(position=0) if shown else None,
        }
