"""The LED language: what the panel's light says, as pure functions of the
state and the time, so it is tested and documented in one place (README,
``hardware/led.md``). The gpiozero panel (``gpio.py``) drives its LED with
them.
"""

from __future__ import annotations

import math

from .types import code_colour

# Named colours an owner can say out loud; the desktop shows the same name.
RGB: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 0.8, 0.0),
    "cyan": (0.0, 1.0, 1.0),
    "magenta": (1.0, 0.0, 1.0),
    "white": (1.0, 1.0, 1.0),
    "amber": (1.0, 0.4, 0.0),
}


def _code_steps(code: str) -> list[tuple[float, float]]:
    """One pending cycle as (level, seconds) steps: a 2 s breath is drawn by
    the caller; then each digit of the code as that many 0.2 s blinks, 0.8 s
    between digits, 1.5 s after the last."""
    steps: list[tuple[float, float]] = []
    for digit in code:
        for _ in range(int(digit)):
            steps += [(1.0, 0.2), (0.0, 0.3)]
        steps.append((0.0, 0.5))
    steps.append((0.0, 1.0))
    return steps


BREATH_S = 2.0
CONSOLE_CYCLE_S = 1.6  # the "needs the console" heartbeat: flash, flash, pause


def pending_cycle_s(code: str) -> float:
    return BREATH_S + 0.5 + sum(s for _, s in _code_steps(code))


def led_level(state: str, t: float, *, code: str | None = None, pwm: bool = True) -> float:
    """The single LED's brightness (0..1) ``t`` seconds into ``state``.

    * idle: a dim glow (PWM) or a 50 ms blip every 5 s: the box is alive;
    * pending: a 2 s breath, then the verification code as blink counts
      (4817: four blinks, eight, one, seven), repeated;
    * console (a risky request no press can approve until the owner's
      console has shown it): a heartbeat, two short flashes and a pause,
      repeated; no code, since the press would not count yet;
    * pairing (window open, nothing asked yet): fast blink, 5 per second;
    * approved: steady on; denied: three fast flashes; expired: a slow fade;
    * fault: a long flash and a short one, repeated (TPM or policy
      unavailable: nothing privileged can run).
    """
    if state == "idle":
        return 0.04 if pwm else float(t % 5.0 < 0.05)
    if state == "pairing" and code is None:
        return float(t % 0.2 < 0.1)
    if state == "console":
        u = t % CONSOLE_CYCLE_S
        return float(u < 0.12 or 0.3 <= u < 0.42)
    if state in ("pending", "pairing"):
        cycle = pending_cycle_s(code or "")
        u = t % cycle
        if u < BREATH_S:
            breath = math.sin(math.pi * u / BREATH_S) ** 2
            return breath if pwm else float(breath > 0.5)
        u -= BREATH_S + 0.5
        if u < 0:
            return 0.0
        for level, seconds in _code_steps(code or ""):
            if u < seconds:
                return level
            u -= seconds
        return 0.0
    if state == "approved":
        return 1.0
    if state == "denied":
        return float(t < 0.6 and t % 0.2 < 0.1)
    if state == "expired":
        level = max(0.0, 1.0 - t / 1.5)
        return level if pwm else float(level > 0.5)
    if state == "fault":
        u = t % 2.0
        return float(u < 0.8 or 1.0 <= u < 1.2)
    return 0.0


def rgb_colour(state: str, t: float, *, code: str | None = None) -> tuple[float, float, float]:
    """The RGB LED: the single LED's rhythm in a colour. Pending shows the
    colour named by the verification code (:func:`code_colour`), which the
    requester sees beside the code on the desktop."""
    level = led_level(state, t, code=code)
    if state in ("pending", "pairing") and code is not None:
        colour = RGB[code_colour(code)]
    else:
        colour = RGB[
            {
                "idle": "white",
                "pairing": "blue",
                "console": "amber",
                "approved": "green",
                "denied": "red",
                "expired": "amber",
                "fault": "red",
            }.get(state, "white")
        ]
    return (colour[0] * level, colour[1] * level, colour[2] * level)
