"""Every request costs the box something: each is bounded, and what a desktop
that reads all day leaves behind stays small."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.config import Limits
from tests.adversarial.desks import Box, open_test_box

STATS = {"intents": [{"verb": "file.stat", "resource": "share:docs/secret.txt"}] * 256}


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    yield from open_test_box(
        tmp_path,
        limits=Limits(requests_per_second=1000, burst=1000, read_bytes_per_minute=8 << 20),
    )


def test_reading_more_than_a_desktops_share_is_refused_before_anything_is_read(
    box: Box,
) -> None:
    desk = box.pair("desk", {"shares": {"docs": "read"}})
    (box.docs / "big.bin").write_bytes(b"x" * (1 << 20))
    reads = {"intents": [{"verb": "file.read", "resource": "share:docs/big.bin"}] * 16}
    before = box.state_bytes()
    r = desk.post("/v1/intents", json=reads)
    assert r.status_code == 429 and r.json()["code"] == "read_quota"
    assert box.broker.db.one("SELECT COUNT(*) AS n FROM actions")["n"] == 0
    assert box.state_bytes() - before < 64 << 10  # nothing of the content was kept
    # Another desktop's share is its own.
    other = box.pair("other", {"shares": {"docs": "read"}})
    one = {"intents": [{"verb": "file.read", "resource": "share:docs/big.bin"}]}
    assert other.post("/v1/intents", json=one).status_code == 200


def test_a_read_only_plan_is_one_audit_entry(box: Box) -> None:
    desk = box.pair("desk")
    size = box.broker.audit.size
    plan = desk.post("/v1/intents", json=STATS).json()
    assert plan["status"] == "done"
    assert box.broker.audit.size == size + 1
    (entry,) = box.broker.audit.entries(size, 10)
    assert entry["kind"] == "plan.read" and entry["data"]["verbs"] == {"file.stat": 256}
    assert entry["data"]["requester"] == box.client_id("desk")


def test_what_a_desktop_reading_all_day_leaves_behind_stays_small(tmp_path: Path) -> None:
    """In the long run: plans past their window are compacted and spent tokens
    pruned (what the broker does every minute), so a new batch of plans reuses
    the space the last one freed; what stays is each plan's row, its one audit
    entry and the checkpoint that signs it."""
    boxes = open_test_box(tmp_path, token_ttl_s=1.0)  # tokens expire at once...
    box = next(boxes)
    desk = box.pair("desk")
    stats = {"intents": STATS["intents"][:32]}  # what stays does not depend on the size

    def batch(plans: int) -> int:
        for _ in range(plans):
            assert desk.post("/v1/intents", json=stats).json()["status"] == "done"
        box.broker.maintain(now=time.time() + 3600)
        # ...so their spent ids may be forgotten, as minutes later: a token
        # lives its TTL rounded up to a whole second, and is forgotten once
        # it ended a whole second before the prune.
        time.sleep(3.1)
        box.broker.tokens.prune(now=time.time() + box.broker.tokens.prune_margin_s)
        return box.kept_bytes()

    try:
        # The first batches size the database's pages; later ones reuse them.
        sizes = [batch(16) for _ in range(5)]
    finally:
        boxes.close()
    per_plan = (sizes[-1] - sizes[1]) / 48
    print(f"state kept per read-only plan: {per_plan:.0f} bytes")
    # The audit entry (~370 bytes) and the checkpoint that signs it (~320)
    # are most of it; the plan's row and the database's pages the rest.
    assert per_plan < 1000, per_plan


def test_read_content_is_kept_only_as_a_digest_after_its_window(box: Box) -> None:
    desk = box.pair("desk")
    mixed = {
        "intents": [
            {"verb": "file.read", "resource": "share:docs/secret.txt"},
            {"verb": "file.mkdir", "resource": "share:docs/new"},
        ]
    }
    plan = desk.post("/v1/intents", json=mixed).json()
    assert box.press()
    done = box.wait(desk, plan["plan_id"])
    assert done["intents"][0]["result"]["content"] == "the owner's secret"
    box.broker.maintain(now=time.time() + 3600)
    kept = desk.get(f"/v1/plans/{plan['plan_id']}").json()["intents"][0]["result"]
    assert "content" not in kept and kept["content_sha256"] and kept["size"] == 18
    # A read-only plan past its window keeps only its summary.
    only = desk.post("/v1/intents", json=STATS).json()
    box.broker.maintain(now=time.time() + 3600)
    summary = desk.get(f"/v1/plans/{only['plan_id']}").json()
    assert summary["compacted"] == 256 and summary["intents"] == []
