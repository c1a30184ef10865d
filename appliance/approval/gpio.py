"""The physical approval panel: one button and one LED (optionally an RGB LED).

Wiring (BCM numbers, defaults; see ``hardware/pinmap.md``):

* **button** between GPIO 17 (header pin 11) and GND (pin 9). The Pi's
  internal pull-up holds the line high; pressing pulls it low. gpiozero's
  ``Button(pull_up=True, bounce_time=...)``; lgpio debounces on the Pi 5,
  and this module also requires a level to hold for ``debounce_s`` before it
  counts (MockFactory pins do not debounce at all).
* **LED** from GPIO 27 (pin 13) through a resistor to the anode, cathode to
  GND: a ``PWMLED`` (breathing), or a plain ``LED`` when ``led_pwm`` is off.
* **RGB LED** (optional) on three more pins: a ``RGBLED``.

On the Pi 5 gpiozero runs on the lgpio pin factory (``pip install
'appliance[pi]'``); tests drive the same classes on gpiozero's
``MockFactory``.

What a person does (timings in :class:`~appliance.config.PanelSettings`):

==========================  ==================================================
hold >= 1 s                 approve the request the LED is showing
tap twice                   deny it
tap once                    nothing (audited: a tap alone is too easy to do
                            by accident)
tap, then hold              nothing (ambiguous; audited)
hold 5 s while idle         open the pairing window (2 minutes)
no answer                   the request expires at its deadline (a denial)
==========================  ==================================================

A gesture applies to the request the LED was showing when the finger went
down (its digest travels with the press), and the arming delay is measured
from then: a press that began before a request appeared, or while the LED
still showed the previous outcome, approves nothing. Every gesture, accepted
or not, reaches the audit log through the queue.

What the LED says is :func:`led_level` / :func:`rgb_colour` (pure functions
of the state and the time, so the language is tested and documented in one
place; see README and ``hardware/led.md``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from appliance.config import PanelSettings

from .led import led_level, rgb_colour
from .panel import Panel, VirtualPanel
from .types import PANEL_STATES, ApprovalRequest, PanelQueue, PanelState

if TYPE_CHECKING:
    from gpiozero import LED, PWMLED, RGBLED, Button

log = logging.getLogger(__name__)

LED_TICK_S = 0.02  # how often the LED thread updates the brightness
OUTCOMES = frozenset({"approved", "denied", "expired"})


# ---------------------------------------------------------------------- devices
@dataclass
class Devices:
    """The gpiozero devices of the panel."""

    button: Button
    led: LED | PWMLED
    rgb: RGBLED | None

    def blink(self) -> None:
        """For the self-test: blink everything, in the background."""
        self.led.blink(on_time=0.25, off_time=0.25)
        if self.rgb is not None:
            self.rgb.blink(on_time=0.25, off_time=0.25, on_color=(1, 1, 1))

    def off(self) -> None:
        self.led.off()
        if self.rgb is not None:
            self.rgb.off()

    def close(self) -> None:
        for device in (self.rgb, self.led, self.button):
            if device is not None:
                with contextlib.suppress(Exception):
                    device.close()


def open_devices(settings: PanelSettings, *, pin_factory: Any = None) -> Devices:
    """Claim the panel's pins (raises gpiozero's errors when it cannot: no GPIO
    chip, pin busy, no pin factory library)."""
    from gpiozero import LED, PWMLED, RGBLED, Button

    if "LG_WD" not in os.environ and not os.access(os.getcwd(), os.W_OK):
        # lgpio keeps its notification pipes in LG_WD, by default the working
        # directory, which a hardened service cannot write.
        os.environ["LG_WD"] = tempfile.gettempdir()
    opened: list[Any] = []
    try:
        button = Button(
            settings.button_pin,
            pull_up=True,
            bounce_time=settings.debounce_s or None,
            pin_factory=pin_factory,
        )
        opened.append(button)
        led_class = PWMLED if settings.led_pwm else LED
        led = led_class(settings.led_pin, pin_factory=pin_factory)
        opened.append(led)
        rgb = None
        if settings.rgb_pins is not None:
            rgb = RGBLED(
                *settings.rgb_pins,
                active_high=not settings.rgb_common_anode,
                pin_factory=pin_factory,
            )
    except BaseException:
        for device in opened:
            with contextlib.suppress(Exception):
                device.close()
        raise
    return Devices(button, led, rgb)


# ---------------------------------------------------------------------- the panel
@dataclass
class _Tap:
    began: float
    released: float
    digest: str | None


class GpioPanel(Panel):
    """A :class:`~appliance.approval.panel.Panel` on gpiozero: a button that
    approves with a hold and denies with a double tap, and an LED that shows
    what is pending. Connect it to the queue with :meth:`connect`."""

    name = "gpio"
    virtual = False
    fault_light = True

    def __init__(
        self,
        settings: PanelSettings,
        *,
        pin_factory: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.settings = settings
        self._clock = clock
        self.devices = open_devices(settings, pin_factory=pin_factory)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stop = False
        now = clock()
        # What the LED shows.
        self._base: PanelState = "idle"
        self._base_since = now
        self._shown: ApprovalRequest | None = None
        self._outcome: tuple[str, float] | None = None  # state, since
        self._fault: str | None = None
        # The button: raw edges, and the debounced level.
        self._raw = self.devices.button.is_pressed
        self._raw_at = now
        self._burst: float | None = None  # first raw edge not yet committed
        # Levels that held for debounce_s while the gesture thread was busy
        # (telling the queue something): each is a real press or release.
        self._settled: list[tuple[float, bool]] = []
        self._down = self._raw  # a button held at start is a press that began now
        self._down_at = now
        self._down_digest: str | None = None
        self._fired = True  # ...and never approves anything
        self._second = False
        self._tap: _Tap | None = None
        self.devices.button.when_pressed = lambda: self._edge(True)
        self.devices.button.when_released = lambda: self._edge(False)
        self._threads = [
            threading.Thread(target=self._gesture_loop, name="panel-button", daemon=True),
            threading.Thread(target=self._led_loop, name="panel-led", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        log.info(
            "approval panel: button GPIO%d, LED GPIO%d%s (%s)",
            settings.button_pin,
            settings.led_pin,
            f", RGB LED GPIO{settings.rgb_pins}" if settings.rgb_pins else "",
            type(self.devices.button.pin_factory).__name__,
        )

    def close(self) -> None:
        with self._lock:
            self._stop = True
            self._wake.notify_all()
        for thread in self._threads:
            thread.join(timeout=2)
        self.devices.close()

    # -- Panel (called with the queue's lock held: quick, never waits on it) ------

    def show(self, request: ApprovalRequest | None) -> None:
        with self._lock:
            self._shown = request
            if request is None and self._base in ("pending", "console", "pairing"):
                # Decided, nothing next: after its outcome the LED is idle
                # (the queue indicates "pairing" after this if a window is
                # still open; it may have closed while a request was shown).
                self._base, self._base_since = "idle", self._clock()

    def indicate(self, state: PanelState) -> None:
        if state not in PANEL_STATES:
            raise ValueError(f"unknown panel state {state!r}")
        with self._lock:
            now = self._clock()
            if state in OUTCOMES:
                self._outcome = (state, now)
            else:
                self._base, self._base_since = state, now

    def set_fault(self, reason: str | None) -> None:
        """Show the fault pattern over everything while ``reason`` is set (the
        TPM or the policy is unavailable: nothing privileged can run)."""
        with self._lock:
            if (reason is None) != (self._fault is None):
                log.warning("approval panel fault %s", f"on: {reason}" if reason else "cleared")
            self._fault = reason

    # -- what the LED shows -----------------------------------------------------

    def display(self) -> tuple[str, float, str | None]:
        """(state, seconds into it, code) the LED shows now."""
        with self._lock:
            return self._display(self._clock())

    def _display(self, now: float) -> tuple[str, float, str | None]:
        if self._fault is not None:
            return "fault", now - self._base_since, None
        if self._outcome is not None:
            state, since = self._outcome
            if now - since < self.settings.outcome_s:
                return state, now - since, None
            self._outcome = None
            self._base_since = max(self._base_since, since + self.settings.outcome_s)
        shown = self._shown if self._base in ("pending", "pairing") else None
        return self._base, now - self._base_since, shown.code if shown else None

    def _displayed_digest(self, now: float) -> str | None:
        """The digest of the request the LED is showing, if it shows one."""
        state, _, code = self._display(now)
        if state in ("pending", "pairing") and code is not None and self._shown is not None:
            return self._shown.digest
        return None

    def _led_loop(self) -> None:
        last: Any = None
        while True:
            with self._lock:
                if self._stop:
                    return
                state, t, code = self._display(self._clock())
            level = led_level(state, t, code=code, pwm=self.settings.led_pwm)
            colour = rgb_colour(state, t, code=code) if self.devices.rgb is not None else None
            if (level, colour) != last:
                try:
                    self.devices.led.value = level if self.settings.led_pwm else level >= 0.5
                    if colour is not None:
                        self.devices.rgb.color = colour  # type: ignore[union-attr]
                except Exception:  # noqa: BLE001 - a closed device at shutdown
                    log.debug("LED update failed", exc_info=True)
                last = (level, colour)
            time.sleep(LED_TICK_S)

    # -- the button ---------------------------------------------------------------

    def _edge(self, pressed: bool) -> None:
        # gpiozero's callback thread: note the edge, let the gesture thread decide.
        with self._lock:
            now = self._clock()
            if self._burst is not None and now - self._raw_at >= self.settings.debounce_s:
                # The level before this edge was steady: it counts, even if the
                # gesture thread has not looked yet (else a release and the next
                # press would merge into one long hold).
                self._settled.append((self._burst, self._raw))
                self._burst = None
            if self._burst is None:
                self._burst = now
            self._raw, self._raw_at = pressed, now
            self._wake.notify_all()

    def _gesture_loop(self) -> None:
        while True:
            with self._lock:
                if self._stop:
                    return
                actions = self._step(self._clock())
                if not actions:
                    self._wake.wait(timeout=self._next_deadline())
            for action in actions:
                try:
                    action()
                except Exception:  # noqa: BLE001 - the button must keep working
                    log.exception("approval panel gesture failed")

    def _next_deadline(self) -> float:
        now, s = self._clock(), self.settings
        times = []
        if self._burst is not None:
            times.append(self._raw_at + s.debounce_s)
        if self._down and not self._fired:
            times.append(self._down_at + s.hold_s)
            times.append(self._down_at + s.pairing_hold_s)
        if self._tap is not None and not self._down:
            times.append(self._tap.released + s.double_tap_s)
        return max(0.001, min(times) - now) if times else 1.0

    def _step(self, now: float) -> list[Callable[[], None]]:
        """Advance the gesture state machine; what to tell the queue (run
        after the panel's lock is released: the queue calls back into it)."""
        s = self.settings
        actions: list[Callable[[], None]] = []
        # Debounce: a level counts once it held for debounce_s; the event's
        # time is the burst's first edge (the earliest the finger moved).
        settled, self._settled = self._settled, []
        if self._burst is not None and now - self._raw_at >= s.debounce_s:
            settled.append((self._burst, self._raw))
            self._burst = None
        for began, level in settled:
            if level != self._down:
                actions += self._pressed(began) if level else self._released(began, now)
        if self._down and not self._fired:
            held = now - self._down_at
            if self._down_digest is not None and held >= s.hold_s:
                actions.append(self._hold(held))
            elif self._down_digest is None and held >= s.pairing_hold_s:
                self._fired = True
                self._second, self._tap = False, None
                actions.append(self._open_pairing)
        if self._tap is not None and not self._down and now - self._tap.released > s.double_tap_s:
            self._tap = None
            actions.append(self._report_tap())
        return actions

    def _report_tap(self) -> Callable[[], None]:
        return self._report(
            "tap",
            "ignored: a tap alone does nothing (hold for a second to approve, tap twice to deny)",
        )

    def _hold(self, held: float) -> Callable[[], None]:
        """A hold reached hold_s while the LED showed a request: approve it,
        unless a tap came just before (tap-then-hold is ambiguous)."""
        self._fired = True
        if self._second:
            self._second, self._tap = False, None
            return self._report(
                "tap-hold",
                "ignored: a tap followed by a hold is ambiguous; nothing was "
                "decided (hold alone to approve, tap twice to deny)",
            )
        return self._press("approve", self._down_digest, held, "hold")

    def _pressed(self, at: float) -> list[Callable[[], None]]:
        self._down, self._down_at, self._fired = True, at, False
        self._down_digest = self._displayed_digest(at)
        self._second = self._tap is not None and at - self._tap.released <= (
            self.settings.double_tap_s
        )
        if self._tap is not None and not self._second:
            # An earlier tap whose window closed just before this press.
            self._tap = None
            return [self._report_tap()]
        return []

    def _released(self, at: float, now: float) -> list[Callable[[], None]]:
        self._down = False
        held = at - self._down_at
        if self._fired:
            self._second, self._tap = False, None
            return []
        if held >= self.settings.hold_s:
            if self._down_digest is not None:  # released just as the hold timer was due
                return [self._hold(now - self._down_at)]
            # A hold that began with no request on the LED: nothing to approve.
            self._second, self._tap = False, None
            return [self._press("approve", None, now - self._down_at, "hold")]
        if self._second and self._tap is not None:
            tap, self._tap, self._second = self._tap, None, False
            return [self._press("deny", tap.digest, now - tap.began, "double-tap")]
        self._tap = _Tap(self._down_at, at, self._down_digest)
        return []

    # -- to the queue (outside the panel's lock) ------------------------------------

    def _press(
        self, decision: str, digest: str | None, held_for: float, gesture: str
    ) -> Callable[[], None]:
        def run() -> None:
            queue = self._need_queue()
            if digest is None and queue.current() is not None:
                # Something is pending now, but the LED did not show it when the
                # finger went down: this gesture was not meant for it.
                queue.report(
                    gesture,
                    "ignored: the press began before the LED showed the request "
                    "(or while it showed the previous outcome); press again",
                    source="button",
                )
                return
            result = queue.press(
                decision,  # type: ignore[arg-type]
                digest=digest,
                source="button",
                held_for=held_for,
                gesture=gesture,
            )
            log.info("button %s: %s", gesture, result.reason)

        return run

    def _report(self, gesture: str, reason: str) -> Callable[[], None]:
        return lambda: self._need_queue().report(gesture, reason, source="button")

    def _open_pairing(self) -> None:
        queue = self._need_queue()
        if not queue.open_pairing_window(source="button"):
            queue.report(
                "long-hold",
                "ignored: the pairing window opens only while nothing is pending",
                source="button",
            )

    def _need_queue(self) -> PanelQueue:
        if self._queue is None:
            raise RuntimeError("the gpio panel is not connected to an approval queue")
        return self._queue

    # -- for status and tests ---------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        state, _, code = self.display()
        with self._lock:
            shown = self._shown
        return {
            "panel": self.name,
            "virtual": self.virtual,
            "state": state,
            "code": code,
            "fault": self._fault,
            "shown": shown.to_public(position=0) if shown else None,
        }


def make_panel(
    settings: PanelSettings, *, dev: bool, clock: Callable[[], float] = time.monotonic
) -> Panel:
    """The panel the configuration asks for: ``auto`` is the GPIO panel in
    production and the virtual panel in development."""
    kind = settings.kind
    if kind == "auto":
        kind = "virtual" if dev else "gpio"
    if kind == "virtual":
        if not dev:
            log.warning(
                "the VIRTUAL panel is configured on a production box: approvals come "
                "from the control socket, not a button"
            )
        return VirtualPanel()
    if kind == "gpio":
        return GpioPanel(settings, clock=clock)
    raise ValueError(f"panel kind must be auto, gpio or virtual, not {kind!r}")
