"""The gpiozero panel on gpiozero's MockFactory: the real Button/PWMLED/RGBLED
classes, pins driven by the tests with real timings."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from appliance.approval import ApprovalQueue, ApprovalRequest
from appliance.approval.gpio import GpioPanel
from appliance.config import ApprovalSettings, PanelSettings

# Short timings keep the suite fast; tests/panel/test_gpio_panel.py also runs
# the real defaults (PanelSettings(), ApprovalSettings()).
FAST_PANEL = PanelSettings(
    hold_s=0.3, double_tap_s=0.25, pairing_hold_s=0.8, debounce_s=0.02, outcome_s=0.2
)
FAST_APPROVALS = ApprovalSettings(timeout_s=30, arming_delay_s=0.3, pairing_window_s=0.6)


@dataclass
class Recorder:
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    decided: list[ApprovalRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_event(self, name: str, payload: dict[str, Any]) -> None:
        with self.lock:
            self.events.append((name, payload))

    def on_decided(self, req: ApprovalRequest) -> None:
        with self.lock:
            self.decided.append(req)

    def presses(self) -> list[dict[str, Any]]:
        with self.lock:
            return [p for n, p in self.events if n == "approval.press"]

    def named(self, name: str) -> list[dict[str, Any]]:
        with self.lock:
            return [p for n, p in self.events if n == name]


@dataclass
class Rig:
    factory: MockFactory
    panel: GpioPanel
    queue: ApprovalQueue
    rec: Recorder

    @property
    def button(self) -> Any:
        return self.factory.pin(self.panel.settings.button_pin)

    @property
    def led(self) -> Any:
        return self.factory.pin(self.panel.settings.led_pin)

    def down(self) -> None:
        self.button.drive_low()  # pull-up: pressed pulls the line low

    def up(self) -> None:
        self.button.drive_high()

    def press(self, seconds: float) -> None:
        self.down()
        time.sleep(seconds)
        self.up()

    def submit(self, n: int = 1, requester: str = "cl_a") -> ApprovalRequest:
        return self.queue.submit("plan", f"plan_{n}", requester, f"plan {n}", f"{n:02x}" * 32)


class SteppedClock:
    """Monotonic time a test can move forward. The approval queue and the
    panel both read it (``open_box(..., clock=...)``), so an arming delay or a
    lockout passes without sleeping, while presses keep their real timing."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return time.monotonic() + self._offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += seconds


def wait_for(cond: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := cond():
            return value
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


def make_rig(
    panel_settings: PanelSettings = FAST_PANEL,
    approvals: ApprovalSettings = FAST_APPROVALS,
    *,
    rgb: bool = False,
) -> Rig:
    factory = MockFactory(pin_class=MockPWMPin)
    if rgb:
        from dataclasses import replace

        panel_settings = replace(panel_settings, rgb_pins=(5, 6, 13))
    panel = GpioPanel(panel_settings, pin_factory=factory)
    rec = Recorder()
    queue = ApprovalQueue(approvals, panel, on_event=rec.on_event, on_decided=rec.on_decided)
    panel.connect(queue)
    return Rig(factory, panel, queue, rec)


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = make_rig()
    yield r
    r.queue.close()
    r.panel.close()
