"""The approval queue and the virtual panel: real threads, short timings."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from appliance.approval import (
    ApprovalQueue,
    ApprovalRequest,
    Panel,
    VirtualPanel,
)
from appliance.approval import queue as queue_mod
from appliance.config import ApprovalSettings
from appliance.errors import ApplianceError, NotFound, QueueFull, Unavailable
from appliance.intents import digest, verification_code


class FakeClock:
    """A clock the test moves by hand (the queue's times are on it)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []
        self.decided: list[ApprovalRequest] = []
        self.decided_event = threading.Event()

    def on_event(self, name: str, payload: dict) -> None:
        self.events.append((name, payload))

    def on_decided(self, req: ApprovalRequest) -> None:
        self.decided.append(req)
        self.decided_event.set()

    def presses(self) -> list[dict]:
        return [p for n, p in self.events if n == "approval.press"]


def D(n: int) -> str:
    return digest({"plan": n})


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def panel() -> VirtualPanel:
    return VirtualPanel()


def make(panel, rec, clock=None, *, timeout=100.0, arming=1.0, size=8) -> ApprovalQueue:
    q = ApprovalQueue(
        ApprovalSettings(
            timeout_s=timeout, arming_delay_s=arming, queue_size=size, lockout_after=0
        ),
        panel,
        clock=clock or time.monotonic,
        on_event=rec.on_event,
        on_decided=rec.on_decided,
    )
    return q


@pytest.fixture
def q(panel, rec, clock):
    queue = make(panel, rec, clock)
    yield queue
    queue.close()


def submit(q: ApprovalQueue, n: int, requester: str = "alice") -> ApprovalRequest:
    return q.submit("plan", f"plan-{n}", requester, f"delete file {n}", D(n))


def test_one_shown_at_a_time_rest_wait_in_fifo_order(q, panel, clock):
    a, b, c = submit(q, 1), submit(q, 2), submit(q, 3)
    assert (a.status, b.status, c.status) == ("pending", "waiting", "waiting")
    assert q.current().approval_id == a.approval_id
    assert panel.shown.approval_id == a.approval_id and panel.state == "pending"
    pub = q.public_list()
    assert [p["approval_id"] for p in pub] == [a.approval_id, b.approval_id, c.approval_id]
    assert [p["position"] for p in pub] == [0, 1, 2]
    assert {p["status"] for p in pub} == {"pending"}  # the API's vocabulary
    assert q.public(b.approval_id)["state"] == "waiting"
    assert b.shown_at is None and b.deadline is None  # not shown, no clock running

    for expected in (a, b, c):
        clock.advance(1.5)
        assert q.current().approval_id == expected.approval_id
        assert q.press("approve", source="button").approval_id == expected.approval_id
    assert q.current() is None and panel.shown is None
    assert [q.get(r.approval_id).status for r in (a, b, c)] == ["approved"] * 3


def test_request_fields_and_verification_code(q):
    r = submit(q, 7)
    assert r.code == verification_code(D(7)) and len(r.code) == 4
    assert r.digest == D(7) and r.kind == "plan" and r.requester == "alice"
    pub = q.public(r.approval_id)
    assert pub["code"] == r.code and pub["digest"] == r.digest
    assert pub["expires_in_s"] == pytest.approx(100.0)


def test_submit_rejects_bad_kind_and_digest(q):
    with pytest.raises(ValueError):
        q.submit("root-shell", "x", "alice", "s", D(1))
    with pytest.raises(ValueError):
        q.submit("plan", "x", "alice", "s", "not-hex")
    assert q.list() == []


def test_queue_full_refuses_and_enqueues_nothing(panel, rec, clock):
    q = make(panel, rec, clock, size=2)
    try:
        shown, w1, w2 = submit(q, 1), submit(q, 2), submit(q, 3)
        with pytest.raises(QueueFull) as err:
            submit(q, 4, requester="mallory")
        assert err.value.status == 429 and "limit 2" in err.value.reason
        assert [r.approval_id for r in q.list()] == [x.approval_id for x in (shown, w1, w2)]
        submitted = [p for n, p in rec.events if n == "approval.submitted"]
        assert len(submitted) == 3 and all(p["requester"] == "alice" for p in submitted)
        # Room again once the shown one is answered.
        clock.advance(2)
        assert q.press("deny", source="button").accepted
        assert submit(q, 5).status == "waiting"
    finally:
        q.close()


def test_press_approve_and_deny(q, rec, clock, panel):
    a, b = submit(q, 1), submit(q, 2)
    clock.advance(1.0)
    res = q.press("approve", source="button")
    assert res.accepted and res.approval_id == a.approval_id
    got = q.get(a.approval_id)
    assert got.status == "approved" and got.decided_by == "button"
    assert [r.approval_id for r in rec.decided] == [a.approval_id]
    assert rec.decided[0].status == "approved"
    clock.advance(1.0)
    res = q.press("deny", source="button")
    assert res.accepted and res.approval_id == b.approval_id
    assert q.get(b.approval_id).status == "denied"
    assert q.public(b.approval_id)["status"] == "denied"
    assert panel.state == "denied"
    assert "approved" in panel.history


def test_press_ignored_during_arming_delay_then_accepted(q, rec, clock):
    a = submit(q, 1)
    clock.advance(0.5)
    res = q.press("approve", source="button")
    assert not res.accepted and "arming delay" in res.reason
    assert res.approval_id == a.approval_id
    assert q.get(a.approval_id).status == "pending"
    clock.advance(0.5)
    assert q.press("approve", source="button").accepted
    assert q.get(a.approval_id).status == "approved"


def test_press_with_an_unknown_decision_is_refused(q, clock):
    a = submit(q, 1)
    clock.advance(5)
    with pytest.raises(ApplianceError):
        q.press("maybe", source="cli")  # type: ignore[arg-type]
    assert q.get(a.approval_id).status == "pending"


def test_press_with_nothing_pending_is_ignored(q, rec):
    res = q.press("approve", source="button")
    assert res == queue_mod.PressResult(False, None, "ignored: nothing is pending")
    assert rec.presses()[-1]["accepted"] is False


def test_digest_mismatch_is_ignored(q, clock):
    a = submit(q, 1)
    clock.advance(5)
    res = q.press("approve", digest=D(999), source="virtual-panel")
    assert not res.accepted and "digest" in res.reason
    assert q.get(a.approval_id).status == "pending"
    assert q.press("approve", digest=a.digest.upper(), source="virtual-panel").accepted


def test_swap_between_display_and_press_does_not_approve_the_new_request(q, clock):
    """Someone looked at A; A is cancelled and B shown; their press for A
    must not approve B, even after B's arming delay."""
    a, b = submit(q, 1), submit(q, 2)
    seen = q.current().digest
    clock.advance(3)
    q.cancel(a.approval_id)
    clock.advance(3)
    res = q.press("approve", digest=seen, source="virtual-panel")
    assert not res.accepted and res.approval_id == b.approval_id
    assert q.get(b.approval_id).status == "pending"


def test_a_press_applies_to_the_shown_request_only_and_the_next_is_armed_anew(q, clock):
    a, b = submit(q, 1), submit(q, 2)
    clock.advance(50)
    assert q.press("approve", source="button").accepted
    assert q.get(a.approval_id).status == "approved"
    assert q.get(b.approval_id).status == "pending"  # a press decides one request only
    # The second press of a double press lands in b's arming delay: ignored.
    res = q.press("approve", source="button")
    assert not res.accepted and "arming delay" in res.reason
    # b's deadline counts from when it was shown (t+50), not when it was submitted.
    b_now = q.get(b.approval_id)
    assert b_now.shown_at == clock() and b_now.deadline == clock() + 100
    clock.advance(70)  # 120 s after submission, 70 s after being shown
    assert q.get(b.approval_id).status == "pending"
    clock.advance(30)
    assert q.get(b.approval_id).status == "expired"


def test_expiry_happens_with_nobody_calling(panel, rec):
    q = make(panel, rec, timeout=0.2, arming=0.0)
    try:
        a, b = submit(q, 1), submit(q, 2)
        t0 = time.monotonic()
        # Nobody touches the queue: only its timer thread can expire a.
        assert rec.decided_event.wait(3), "request did not expire on its own"
        assert time.monotonic() - t0 >= 0.15
        assert rec.decided[0].approval_id == a.approval_id
        assert rec.decided[0].status == "expired" and rec.decided[0].decided_by == "timeout"
        assert "expired" in panel.history
        assert panel.shown.approval_id == b.approval_id  # next one shown
        assert q.get(a.approval_id).status == "expired"
        assert q.public(a.approval_id)["status"] == "expired"
        # The expired request can no longer be approved.
        assert q.press("approve", digest=a.digest, source="virtual-panel").accepted is False
    finally:
        q.close()


def test_expiry_is_also_checked_lazily(q, clock, rec):
    a = submit(q, 1)
    clock.advance(100)
    res = q.press("approve", source="button")  # too late: a expired first
    assert not res.accepted and res.reason == "ignored: nothing is pending"
    assert q.get(a.approval_id).status == "expired"


def test_wait_returns_on_decision(panel, rec):
    q = make(panel, rec, arming=0.0)
    try:
        a = submit(q, 1)
        threading.Timer(0.05, lambda: q.press("approve", source="button")).start()
        t0 = time.monotonic()
        got = q.wait(a.approval_id, 5)
        assert got.status == "approved"
        assert time.monotonic() - t0 < 2
    finally:
        q.close()


def test_wait_returns_on_timeout(q):
    a = submit(q, 1)
    t0 = time.monotonic()
    got = q.wait(a.approval_id, 0.1)
    assert got.status == "pending"
    assert 0.09 <= time.monotonic() - t0 < 1.5


def test_wait_unknown_id_is_not_found(q):
    with pytest.raises(NotFound):
        q.wait("apr_nope", 0.01)
    with pytest.raises(NotFound):
        q.get("apr_nope")


def test_on_event_sees_ignored_presses_too(q, rec, clock):
    q.press("approve", source="button")  # nothing pending
    a = submit(q, 1)
    q.press("approve", source="button")  # arming delay
    clock.advance(2)
    q.press("approve", digest=D(5), source="virtual-panel:cli")  # wrong digest
    q.press("deny", digest=a.digest, source="virtual-panel:cli")  # accepted
    presses = rec.presses()
    assert [p["accepted"] for p in presses] == [False, False, False, True]
    assert [p["source"] for p in presses] == ["button"] * 2 + ["virtual-panel:cli"] * 2
    assert "nothing" in presses[0]["reason"]
    assert "arming" in presses[1]["reason"]
    assert "digest" in presses[2]["reason"] and presses[2]["digest"] == D(5)
    assert presses[3]["approval_id"] == a.approval_id and presses[3]["decision"] == "deny"
    names = [n for n, _ in rec.events]
    # The press is reported before the decision it caused.
    assert names[-2:] == ["approval.press", "approval.decided"]


def test_cancel_waiting_shown_and_decided(q, rec, clock, panel):
    a, b, c = submit(q, 1), submit(q, 2), submit(q, 3)
    got = q.cancel(b.approval_id)
    assert got.status == "cancelled" and got.decided_by == "requester"
    assert [r.approval_id for r in q.list()] == [a.approval_id, c.approval_id]
    pub = q.public(b.approval_id)
    assert pub["status"] == "denied" and pub["state"] == "cancelled"
    q.cancel(a.approval_id, by="broker")
    assert q.current().approval_id == c.approval_id
    assert panel.shown.approval_id == c.approval_id
    clock.advance(2)
    assert q.press("approve", source="button").accepted
    # A cancel after the fact changes nothing.
    assert q.cancel(c.approval_id).status == "approved"
    assert [r.status for r in rec.decided] == ["cancelled", "cancelled", "approved"]


def test_close_cancels_open_requests_and_wakes_waiters(panel, rec):
    q = make(panel, rec)
    a = submit(q, 1)
    b = submit(q, 2)
    result: list[ApprovalRequest] = []
    t = threading.Thread(target=lambda: result.append(q.wait(a.approval_id, 10)))
    t.start()
    time.sleep(0.05)
    q.close()
    t.join(2)
    assert result and result[0].status == "cancelled" and result[0].decided_by == "shutdown"
    assert q.get(b.approval_id).status == "cancelled"
    with pytest.raises(Unavailable):
        submit(q, 3)
    assert not q.press("approve", source="button").accepted
    assert not q._timer.is_alive()


def test_only_one_of_many_concurrent_presses_is_accepted(panel, rec):
    q = make(panel, rec, arming=0.3)
    try:
        a, b = submit(q, 1), submit(q, 2)
        time.sleep(0.35)
        barrier = threading.Barrier(16)
        results = []

        def go() -> None:
            barrier.wait()
            results.append(q.press("approve", source="button"))

        threads = [threading.Thread(target=go) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(r.accepted for r in results) == 1
        assert q.get(a.approval_id).status == "approved"
        assert q.get(b.approval_id).status == "pending"  # armed anew, not approved
    finally:
        q.close()


def test_decided_requests_are_pruned(panel, rec, clock, monkeypatch):
    monkeypatch.setattr(queue_mod, "KEEP_DECIDED", 3)
    q = make(panel, rec, clock, arming=0.0)
    try:
        ids = []
        for n in range(5):
            ids.append(submit(q, n).approval_id)
            assert q.press("deny", source="button").accepted
        for old in ids[:2]:
            with pytest.raises(NotFound):
                q.get(old)
        assert [q.get(i).status for i in ids[2:]] == ["denied"] * 3
    finally:
        q.close()


def test_callback_failures_do_not_stop_the_queue(panel, clock):
    def boom(*_a) -> None:
        raise RuntimeError("audit down")

    q = ApprovalQueue(
        ApprovalSettings(arming_delay_s=0), panel, clock=clock, on_event=boom, on_decided=boom
    )
    try:
        a = submit(q, 1)
        assert q.press("approve", source="button").accepted
        assert q.get(a.approval_id).status == "approved"
        assert submit(q, 2).status == "pending"
    finally:
        q.close()


class BrokenPanel(VirtualPanel):
    name = "broken"

    def __init__(self) -> None:
        super().__init__()
        self.fail_for: set[str] = set()

    def show(self, request):
        if request is not None and request.subject_id in self.fail_for:
            raise OSError("LED driver gone")
        super().show(request)


def test_panel_failure_fails_closed(rec, clock):
    panel = BrokenPanel()
    q = make(panel, rec, clock)
    try:
        panel.fail_for = {"plan-1"}
        with pytest.raises(Unavailable):
            submit(q, 1)
        assert q.list() == [] and q.current() is None
        assert any(n == "approval.panel_fault" for n, _ in rec.events)
        # A request the panel cannot show when its turn comes is denied, never
        # left approvable by a blind press.
        panel.fail_for = {"plan-3"}
        a, b, c = submit(q, 2), submit(q, 3), submit(q, 4)
        clock.advance(2)
        assert q.press("approve", source="button").approval_id == a.approval_id
        got = q.get(b.approval_id)
        assert got.status == "denied" and got.decided_by == "panel-fault"
        assert q.current().approval_id == c.approval_id
    finally:
        q.close()


# -- the virtual panel -----------------------------------------------------------


def test_virtual_panel_is_loud_and_is_a_panel(caplog):
    with caplog.at_level(logging.WARNING):
        p = VirtualPanel()
    assert isinstance(p, Panel) and p.virtual and p.name == "virtual"
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("VIRTUAL" in m and "appliance panel approve" in m for m in msgs)


def test_virtual_panel_press_goes_through_the_queue(panel, rec, clock, caplog):
    q = make(panel, rec, clock)
    try:
        panel.connect(q)
        a = submit(q, 1)
        snap = panel.snapshot()
        assert snap["virtual"] and snap["state"] == "pending"
        assert snap["shown"]["approval_id"] == a.approval_id
        res = panel.press("approve", digest=snap["shown"]["digest"])
        assert not res.accepted  # the arming delay applies to the virtual panel too
        clock.advance(1)
        with caplog.at_level(logging.WARNING):
            res = panel.press("approve", digest=snap["shown"]["digest"], source="cli")
        assert res.accepted
        got = q.get(a.approval_id)
        assert got.status == "approved" and got.decided_by == "virtual-panel:cli"
        assert any("VIRTUAL" in r.getMessage() for r in caplog.records)
        assert panel.state == "approved" and panel.shown is None
    finally:
        q.close()


def test_virtual_panel_requires_digest_and_attachment(panel):
    with pytest.raises(Unavailable):
        panel.press("approve", digest=D(1))
    with pytest.raises(TypeError):
        panel.press("approve")  # type: ignore[call-arg]
