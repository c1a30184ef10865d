"""Gestures on the gpiozero panel, driven through MockFactory pins in real time.

A press must approve exactly the request the person meant: the one the LED
showed when the finger went down, after its arming delay, with a deliberate
hold. Everything else is ignored, and every press is on the record."""

from __future__ import annotations

import time
from typing import Any

import pytest

from appliance.approval.led import RGB, led_level, pending_cycle_s
from appliance.approval.types import code_colour
from appliance.config import ApprovalSettings, PanelSettings
from appliance.errors import LockedOut

from .conftest import FAST_APPROVALS, FAST_PANEL, Rig, make_rig, wait_for

ARMED = FAST_APPROVALS.arming_delay_s + 0.05


def test_hold_approves_the_shown_request(rig: Rig) -> None:
    req = rig.submit(1)
    time.sleep(ARMED)
    rig.press(0.4)
    decided = wait_for(lambda: rig.rec.decided)
    assert [(d.approval_id, d.status, d.gesture) for d in decided] == [
        (req.approval_id, "approved", "hold")
    ]
    press = rig.rec.presses()[-1]
    assert press["accepted"] and press["digest"] == req.digest and press["gesture"] == "hold"
    assert wait_for(lambda: rig.panel.display()[0] == "approved")


def test_tap_alone_does_nothing_and_is_audited(rig: Rig) -> None:
    req = rig.submit(1)
    time.sleep(ARMED)
    rig.press(0.1)
    press = wait_for(lambda: rig.rec.presses())[-1]
    assert press["gesture"] == "tap" and not press["accepted"]
    assert "a tap alone does nothing" in press["reason"]
    assert press["approval_id"] == req.approval_id
    assert rig.queue.current().status == "pending" and not rig.rec.decided


def test_double_tap_denies(rig: Rig) -> None:
    req = rig.submit(1)
    time.sleep(ARMED)
    rig.press(0.08)
    time.sleep(0.1)
    rig.press(0.08)
    decided = wait_for(lambda: rig.rec.decided)
    assert [(d.approval_id, d.status, d.gesture) for d in decided] == [
        (req.approval_id, "denied", "double-tap")
    ]
    assert not any(p["gesture"] == "tap" for p in rig.rec.presses())


def test_slow_second_press_after_a_tap_is_ambiguous_not_an_approval(rig: Rig) -> None:
    rig.submit(1)
    time.sleep(ARMED)
    rig.press(0.08)
    time.sleep(0.1)
    rig.press(0.45)  # meant as the second tap of a deny, held too long
    press = wait_for(lambda: [p for p in rig.rec.presses() if p["gesture"] == "tap-hold"])[0]
    assert not press["accepted"] and "ambiguous" in press["reason"]
    time.sleep(0.3)
    assert rig.queue.current().status == "pending" and not rig.rec.decided


def bounce(rig: Rig, edges: int = 6, gap: float = 0.002) -> None:
    """A contact bouncing: the line flips a few times within ~10 ms."""
    for i in range(edges):
        rig.button.drive_low() if i % 2 == 0 else rig.button.drive_high()
        time.sleep(gap)


def test_bounce_is_one_press(rig: Rig) -> None:
    rig.submit(1)
    time.sleep(ARMED)
    # A bouncy tap (bounces on the way down and up) is one tap, not a double tap.
    bounce(rig)
    rig.down()
    time.sleep(0.08)
    bounce(rig, edges=5)
    rig.up()
    press = wait_for(lambda: rig.rec.presses())[-1]
    assert press["gesture"] == "tap" and len(rig.rec.presses()) == 1
    assert not rig.rec.decided
    # A bouncy hold approves once.
    bounce(rig)
    rig.down()
    time.sleep(0.45)
    rig.up()
    wait_for(lambda: rig.rec.decided)
    time.sleep(0.3)
    assert [d.status for d in rig.rec.decided] == ["approved"]
    assert [p["gesture"] for p in rig.rec.presses()] == ["tap", "hold"]
    # Noise shorter than the debounce time is no press at all.
    bounce(rig, edges=4)
    time.sleep(0.4)
    assert len(rig.rec.presses()) == 2


def test_press_during_the_arming_delay_is_ignored(rig: Rig) -> None:
    req = rig.submit(1)
    time.sleep(0.05)  # the request just appeared
    rig.press(0.4)
    press = wait_for(lambda: rig.rec.presses())[-1]
    assert not press["accepted"] and "arming delay" in press["reason"]
    assert press["approval_id"] == req.approval_id
    assert rig.queue.current().status == "pending"


def test_a_hold_that_began_before_the_request_appeared_approves_nothing(rig: Rig) -> None:
    rig.down()
    time.sleep(0.05)
    req = rig.submit(1)  # appears under a finger already on the button
    time.sleep(0.7)  # long past the hold time and the arming delay
    rig.up()
    press = wait_for(lambda: rig.rec.presses())[-1]
    assert not press["accepted"] and "before the LED showed the request" in press["reason"]
    assert rig.queue.get(req.approval_id).status == "pending"


def test_press_with_nothing_pending(rig: Rig) -> None:
    rig.press(0.45)  # a hold, shorter than the pairing hold
    press = wait_for(lambda: rig.rec.presses())[-1]
    assert not press["accepted"] and press["reason"] == "ignored: nothing is pending"
    rig.press(0.1)
    tap = wait_for(lambda: len(rig.rec.presses()) == 2 and rig.rec.presses()[-1])
    assert tap["gesture"] == "tap" and tap["approval_id"] is None
    assert rig.queue.pairing_window() is None


def test_two_requests_queued_the_press_approves_only_the_shown_one(rig: Rig) -> None:
    first, second = rig.submit(1), rig.submit(2)
    time.sleep(ARMED)
    rig.press(0.4)
    wait_for(lambda: rig.rec.decided)
    time.sleep(0.2)
    assert [(d.approval_id, d.status) for d in rig.rec.decided] == [(first.approval_id, "approved")]
    shown = rig.queue.current()
    assert shown.approval_id == second.approval_id and shown.status == "pending"
    # The LED shows the outcome first, then the second request's code.
    assert wait_for(lambda: rig.panel.display()[2] == second.code)


def test_expiry_denies_and_shows_expired() -> None:
    r = make_rig(approvals=ApprovalSettings(timeout_s=0.5, arming_delay_s=0.3))
    try:
        req = r.submit(1)
        decided = wait_for(lambda: r.rec.decided)
        assert [(d.approval_id, d.status, d.gesture) for d in decided] == [
            (req.approval_id, "expired", "timeout")
        ]
        assert wait_for(lambda: r.panel.display()[0] == "expired")
        assert wait_for(lambda: r.panel.display()[0] == "idle")
        r.press(0.4)  # too late: nothing is pending any more
        assert wait_for(lambda: r.rec.presses())[-1]["reason"] == "ignored: nothing is pending"
    finally:
        r.queue.close()
        r.panel.close()


def test_lockout_after_repeated_denials() -> None:
    settings = ApprovalSettings(
        timeout_s=1.0, arming_delay_s=0.3, lockout_after=2, lockout_window_s=60, lockout_s=1.0
    )
    r = make_rig(approvals=settings)
    try:
        r.submit(1, requester="cl_pest")
        time.sleep(ARMED)
        r.press(0.08)
        time.sleep(0.1)
        r.press(0.08)  # denied
        wait_for(lambda: r.rec.decided)
        r.submit(2, requester="cl_pest")  # left to expire
        wait_for(lambda: len(r.rec.decided) == 2)
        assert [d.status for d in r.rec.decided] == ["denied", "expired"]
        with pytest.raises(LockedOut) as e:
            r.submit(3, requester="cl_pest")
        assert e.value.status == 429 and "locked out" in e.value.reason
        assert [x["requester"] for x in r.queue.lockouts()] == ["cl_pest"]
        assert r.rec.named("approval.lockout")[0]["requester"] == "cl_pest"
        r.submit(4, requester="cl_other")  # others are not affected
        time.sleep(1.1)
        assert r.queue.lockouts() == []
        r.submit(5, requester="cl_pest")  # the lockout ends
    finally:
        r.queue.close()
        r.panel.close()


def test_pairing_window_opens_with_a_long_hold_and_closes_by_itself(rig: Rig) -> None:
    rig.press(0.95)  # pairing_hold_s is 0.8 here (5 s by default)
    opened = wait_for(lambda: rig.rec.named("approval.pairing_window"))
    assert opened[0]["open"] is True and opened[0]["source"] == "button"
    assert rig.queue.pairing_window() is not None
    assert rig.panel.display()[0] == "pairing" and rig.panel.display()[2] is None
    closed = wait_for(lambda: len(rig.rec.named("approval.pairing_window")) == 2, timeout=3)
    assert closed and rig.rec.named("approval.pairing_window")[1]["open"] is False
    assert rig.queue.pairing_window() is None
    assert wait_for(lambda: rig.panel.display()[0] == "idle")
    # While a request is pending, the long hold approves it and opens nothing.
    rig.submit(1)
    time.sleep(ARMED)
    rig.press(0.95)
    assert wait_for(lambda: rig.rec.decided)[0].status == "approved"
    assert len(rig.rec.named("approval.pairing_window")) == 2


def test_a_release_and_the_next_press_count_while_the_queue_is_slow(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Edges that arrive while the button's thread is busy telling the queue
    something (writing the audit log, say) are each a real press or release:
    a release and the press after it must not merge into one endless hold."""
    opening = rig.queue.open_pairing_window

    def slow_open(**kw: Any) -> Any:
        time.sleep(0.6)
        return opening(**kw)

    monkeypatch.setattr(rig.queue, "open_pairing_window", slow_open)
    rig.down()
    time.sleep(0.85)  # pairing_hold_s is 0.8: the window starts opening
    rig.up()  # released while the window is still being opened
    time.sleep(0.1)
    rig.down()  # ...and pressed again, still during it
    time.sleep(0.1)
    rig.up()
    assert wait_for(lambda: rig.queue.pairing_window())
    taps = wait_for(lambda: [p for p in rig.rec.presses() if p.get("gesture") == "tap"])
    assert "a tap alone does nothing" in taps[0]["reason"]


def test_real_default_timings() -> None:
    """The defaults (hold 1 s, arming 1 s, double tap 0.5 s) as shipped."""
    r = make_rig(PanelSettings(), ApprovalSettings())
    try:
        req = r.submit(1)
        time.sleep(0.5)
        r.press(1.2)  # began within the 1 s arming delay
        assert not wait_for(lambda: r.rec.presses())[-1]["accepted"]
        time.sleep(0.6)
        r.press(0.6)  # a tap: under a second
        wait_for(lambda: len(r.rec.presses()) == 2)
        assert r.rec.presses()[-1]["gesture"] == "tap" and not r.rec.decided
        r.press(1.15)
        decided = wait_for(lambda: r.rec.decided)
        assert [(d.approval_id, d.status) for d in decided] == [(req.approval_id, "approved")]
    finally:
        r.queue.close()
        r.panel.close()


# ---------------------------------------------------------------------- the LED
def test_led_breathes_and_blinks_the_code_on_the_pin(rig: Rig) -> None:
    rig.led.clear_states()
    req = rig.submit(1)
    time.sleep(1.0)
    levels = [s.state for s in rig.led.states]
    assert max(levels) > 0.9 and 0.1 < sorted(levels)[len(levels) // 2] < 0.9  # a breath
    assert rig.panel.display() == ("pending", pytest.approx(1.0, abs=0.2), req.code)


def test_single_led_blink_count_is_the_code() -> None:
    code = "4817"
    start = 2.2  # in the pause after the breath
    levels = [
        led_level("pending", start + i * 0.01, code=code)
        for i in range(int((pending_cycle_s(code) - start) * 100))
    ]
    groups, blinks, dark = [], 0, 0
    for was, now in zip(levels, levels[1:], strict=False):
        if now and not was:
            blinks += 1
        dark = dark + 1 if not now else 0
        if dark == 45 and blinks:  # a 0.45 s+ gap ends a digit
            groups.append(blinks)
            blinks = 0
    assert groups == [4, 8, 1, 7]


def test_led_states_are_distinct() -> None:
    def trace(state: str) -> list[float]:
        return [round(led_level(state, i * 0.05), 2) for i in range(40)]

    states = ["idle", "pairing", "approved", "denied", "expired", "fault"]
    assert len({tuple(trace(s)) for s in states}) == len(states)
    assert trace("pairing").count(1.0) > 15  # fast blink
    assert set(trace("approved")) == {1.0}


def test_rgb_led_pending_colour_is_the_code_colour() -> None:
    r = make_rig(rgb=True)
    try:
        req = r.submit(1)
        time.sleep(1.0)  # mid-breath
        lit = tuple(c > 0.05 for c in r.panel.devices.rgb.color)
        assert lit == tuple(c > 0 for c in RGB[code_colour(req.code)]), code_colour(req.code)
        assert r.queue.public(req.approval_id)["colour"] == code_colour(req.code)
    finally:
        r.queue.close()
        r.panel.close()


def test_fault_overrides_everything(rig: Rig) -> None:
    rig.submit(1)
    rig.panel.set_fault("the TPM is unreachable")
    assert rig.panel.display()[0] == "fault"
    time.sleep(ARMED)
    rig.press(0.4)  # the LED shows no request: a press approves nothing
    press = wait_for(lambda: rig.rec.presses())[-1]
    assert not press["accepted"] and not rig.rec.decided
    rig.panel.set_fault(None)
    assert rig.panel.display()[0] == "pending"


def test_fast_settings_are_used() -> None:
    # Guard against the fixtures silently running the slow defaults.
    assert FAST_PANEL.hold_s < PanelSettings().hold_s


def test_real_default_double_tap_and_pairing_hold() -> None:
    """Defaults again: a double tap within half a second denies; a 5 s hold on
    the idle button opens the 2-minute pairing window."""
    r = make_rig(PanelSettings(), ApprovalSettings())
    try:
        req = r.submit(1)
        time.sleep(1.1)
        r.press(0.12)
        time.sleep(0.25)
        r.press(0.12)
        decided = wait_for(lambda: r.rec.decided)
        assert [(d.approval_id, d.status, d.gesture) for d in decided] == [
            (req.approval_id, "denied", "double-tap")
        ]
        r.down()
        time.sleep(5.1)
        assert 119 < (wait_for(lambda: r.queue.pairing_window()) or 0) <= 120
        r.up()
        assert r.panel.display()[0] == "pairing"
        r.queue.close_pairing_window()
        assert wait_for(lambda: r.panel.display()[0] == "idle")
    finally:
        r.queue.close()
        r.panel.close()
