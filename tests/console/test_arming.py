"""Trusted arming and the lockouts that protect the owner, in the approval
queue itself (a clock the test moves), the LED's "needs the console", and
the panel's summary that never hides a risky step."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from appliance.approval import ApprovalQueue, VirtualPanel
from appliance.approval.led import led_level, rgb_colour
from appliance.broker.evaluate import Evaluated
from appliance.broker.summary import needs_console, plan_summary
from appliance.config import ApprovalSettings
from appliance.errors import NotFound
from appliance.intents import Intent, digest
from appliance.policy import Decision


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(clock: Clock) -> Iterator[tuple[ApprovalQueue, VirtualPanel, list[tuple[str, Any]]]]:
    events: list[tuple[str, Any]] = []
    panel = VirtualPanel()
    settings = ApprovalSettings(arming_delay_s=1.0, timeout_s=100, lockout_after=3)
    q = ApprovalQueue(settings, panel, clock=clock, on_event=lambda n, p: events.append((n, p)))
    panel.connect(q)
    try:
        yield q, panel, events
    finally:
        q.close()


def D(n: int) -> str:
    return digest({"plan": n})


def test_a_risky_request_is_approved_by_no_press_until_the_console_showed_it(
    queue: Any, clock: Clock
) -> None:
    q, panel, events = queue
    req = q.submit("plan", "plan_1", "cl_a", "s", D(1), console=("it deletes (1)",))
    assert panel.state == "console" and panel.shown is not None
    clock.t += 5
    refused = panel.press("approve", digest=D(1))
    assert not refused.accepted and "needs the console" in refused.reason
    assert q.public(req.approval_id)["armed_in_s"] is None
    # Only the request on the panel, with its own digest, can be marked shown.
    with pytest.raises(NotFound):
        q.seen(req.approval_id, D(2), by="cl_console")
    q.seen(req.approval_id, D(1), by="cl_console")
    assert panel.state == "pending"  # now the light shows the code
    assert [p for n, p in events if n == "approval.seen"] == [
        {"approval_id": req.approval_id, "digest": D(1), "by": "cl_console"}
    ]
    # The arming delay runs again from the moment the console showed it.
    clock.t += 0.5
    early = panel.press("approve", digest=D(1))
    assert not early.accepted and "arming delay" in early.reason
    assert q.public(req.approval_id)["armed_in_s"] == pytest.approx(0.5)
    clock.t += 0.6
    assert panel.press("approve", digest=D(1)).accepted


def test_denying_needs_no_console_and_a_waiting_request_cannot_be_marked_shown(
    queue: Any, clock: Clock
) -> None:
    q, panel, _ = queue
    first = q.submit("plan", "plan_1", "cl_a", "s", D(1))
    second = q.submit("plan", "plan_2", "cl_b", "s", D(2), console=("it deletes (1)",))
    with pytest.raises(NotFound):
        q.seen(second.approval_id, D(2), by="cl_console")  # it waits behind the first
    clock.t += 2
    assert panel.press("approve", digest=D(1)).accepted
    assert q.get(first.approval_id).status == "approved"
    assert q.get(second.approval_id).seen_at is None and panel.state == "console"
    clock.t += 2
    assert panel.press("deny", digest=D(2)).accepted


def test_a_denied_model_plan_does_not_lock_its_desktop_out_and_the_owner_lifts_a_lockout(
    queue: Any, clock: Clock
) -> None:
    q, panel, events = queue
    for n in range(5):  # junk the box's model proposed, denied each time
        q.submit("plan", f"plan_m{n}", "cl_a", "s", D(n), counts=False)
        clock.t += 2
        assert panel.press("deny", digest=D(n)).accepted
    assert q.lockout("cl_a") is None
    for n in range(10, 13):  # the desktop's own plans
        q.submit("plan", f"plan_{n}", "cl_a", "s", D(n))
        clock.t += 2
        assert panel.press("deny", digest=D(n)).accepted
    assert q.lockout("cl_a") is not None
    assert [p["requester"] for p in q.lockouts()] == ["cl_a"]
    assert q.lift_lockout("cl_a", by="cl_console")
    assert q.lockout("cl_a") is None and not q.lift_lockout("cl_a", by="cl_console")
    assert ("approval.lockout_lifted", {"requester": "cl_a", "by": "cl_console"}) in events
    q.submit("plan", "plan_after", "cl_a", "s", D(20))  # it may ask again


def test_the_light_says_needs_the_console_without_a_code() -> None:
    beats = [led_level("console", t / 20) for t in range(32)]  # one 1.6 s cycle
    flashes = sum(1 for a, b in zip([0.0, *beats], beats, strict=False) if b > a)
    assert flashes == 2
    assert beats[-10:] == [0.0] * 10  # then a pause
    pending = [led_level("pending", t / 20, code="1111") for t in range(32)]
    assert beats != pending
    assert rgb_colour("console", 0.05) == (1.0, 0.4, 0.0)  # amber


def evaluated(verb: str, resource: str, **params: Any) -> Evaluated:
    derived = params.pop("derived", {})
    intent = Intent(verb=verb, resource=resource, params=params, provenance=derived)
    risk = "high" if derived else "medium"
    return Evaluated(intent, resource, params, Decision("approve", risk, ("r",)), "d" * 64)


def test_the_summary_never_hides_a_delete_or_a_content_derived_step() -> None:
    moves = [
        evaluated("file.move", f"share:docs/{'x' * 200}{i}", to=f"share:docs/y/{i}")
        for i in range(10)
    ]
    steps = [
        *moves,
        evaluated("file.move", "share:docs/a", to="share:docs/b", derived={"params.to": "content"}),
        evaluated("file.delete", "share:docs/notes.txt"),
    ]
    summary = plan_summary("laptop (cl_a)", steps)
    assert summary.startswith("laptop (cl_a) wants to: 11 × file.move, 1 × file.delete: ")
    assert "file.delete share:docs/notes.txt [delete]" in summary
    assert "file.move share:docs/a -> share:docs/b [derived from file content]" in summary
    assert summary.endswith("(+7 more: 7 × file.move)")
    assert len(summary) < 2000  # long names are cut, the risky steps are not
    settings = ApprovalSettings()
    assert needs_console(settings, steps) == (
        "it deletes (1)",
        "details came from file content (1)",
        "it has 12 steps (more than 8)",
        "a step is of high risk",
    )
    assert needs_console(settings, moves[:2]) == ()
    off = ApprovalSettings(
        console_deletes=False, console_content=False, console_steps=0, console_risk=""
    )
    assert needs_console(off, steps) == ()


def test_the_physical_button_approves_a_risky_request_only_after_the_console_showed_it() -> None:
    """The real gpiozero panel on mock pins: while the light says "needs the
    console" a hold carries no request and approves nothing; once the
    console showed the digest, the light blinks the code and a hold counts."""
    from tests.panel.conftest import make_rig, wait_for

    rig = make_rig()
    try:
        req = rig.queue.submit("plan", "plan_1", "cl_a", "s", D(1), console=("it deletes (1)",))
        assert rig.panel.display()[0] == "console" and rig.panel.display()[2] is None
        time.sleep(0.4)  # past the arming delay
        rig.press(0.45)  # a hold
        wait_for(lambda: rig.rec.presses())
        assert not rig.rec.presses()[-1]["accepted"]
        assert rig.queue.get(req.approval_id).status == "pending"
        rig.queue.seen(req.approval_id, D(1), by="cl_console")
        state, _, code = rig.panel.display()
        assert state == "pending" and code == req.code
        time.sleep(0.4)  # the arming delay runs again from the console's showing
        rig.press(0.45)
        wait_for(lambda: rig.queue.get(req.approval_id).status == "approved")
    finally:
        rig.queue.close()
        rig.panel.close()
