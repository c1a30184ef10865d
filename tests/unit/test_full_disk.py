"""A full data partition, for real: the box's state and its share on a small
tmpfs that a share user fills from outside. Every change is refused with 507
and a reason, before anything changes; nothing is lost; reads, the approval
panel and status keep working (on the reserve the broker gives back); and
changes run again, without a restart, once space returns."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.audit import verify_log
from tests.unit.files_box import Box, Clock

MiB = 1 << 20


@pytest.fixture
def data(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs as the data partition needs root")
    mount = tmp_path / "data"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs", str(mount)],
                   check=True)  # fmt: skip
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill_up(path: Path) -> int:
    """Write into the share from outside until the disk is full (a share
    user copying a film over the network); returns the bytes written."""
    written = 0
    with path.open("wb", buffering=0) as f:
        chunk = b"\0" * MiB
        while True:
            try:
                written += f.write(chunk) or 0
            except OSError as e:
                assert e.errno == errno.ENOSPC
                chunk = chunk[: len(chunk) // 2]
                if len(chunk) < 4096:
                    return written


def refused(r) -> dict:  # noqa: ANN001 - an httpx response
    assert r.status_code == 507, r.text
    body = r.json()
    assert body["code"] == "disk_full"
    return body


def intent(verb: str, resource: str, **params: object) -> dict:
    return {"intents": [{"verb": verb, "resource": resource, "params": params}]}


def test_a_full_disk_fails_closed_and_recovers(data: Path) -> None:
    share = data / "share"
    (share / "Inbox").mkdir(parents=True)
    (share / "Inbox" / "a.pdf").write_bytes(b"%PDF a")
    box = Box(data, share, Clock(), low_free_bytes=4 * MiB, reserve_bytes=2 * MiB)
    try:
        assert (data / "state" / "reserve").stat().st_size == 2 * MiB
        assert box.run("file.write", "share:docs/Inbox/note.txt", content="hi")["status"] == "done"
        film = share / "film.mkv"
        fill_up(film)
        entries_before = box.broker.audit.size

        # A read still runs: its audit entries go where the reserve was.
        r = box.http.post("/v1/intents", json=intent("file.read", "share:docs/Inbox/a.pdf"))
        assert r.status_code == 200, r.text
        assert r.json()["intents"][0]["result"]["content"] == "%PDF a"
        assert not (data / "state" / "reserve").exists()
        assert box.broker.audit.size > entries_before and not box.broker.audit.closed

        # Every change is refused before anyone is asked to press, with a reason.
        for body in (
            intent("file.write", "share:docs/Inbox/new.txt", content="x"),
            intent("file.delete", "share:docs/Inbox/a.pdf"),
            intent("file.move", "share:docs/Inbox/a.pdf", to="share:docs/a.pdf"),
            intent("file.copy", "share:docs/Inbox/a.pdf", to="share:docs/b.pdf"),
        ):
            reason = refused(box.http.post("/v1/intents", json=body))["reason"]
            assert "data partition is full" in reason and "reads and approvals go on" in reason
        assert box.broker.approvals.current() is None
        assert sorted(p.name for p in (share / "Inbox").iterdir()) == ["a.pdf", "note.txt"]

        # The panel, status and health keep answering, and say why.
        assert box.http.get("/v1/approvals").status_code == 200
        status = box.broker.status()
        assert status["disk"]["low"] is True and status["disk"]["reserve_held"] is False
        health = box.http.get("/healthz").json()
        assert any("data partition is full" in w for w in health["warnings"])

        # Space returns (the film is removed over the share): changes run
        # again, without a restart, and the reserve is taken back.
        film.unlink()
        plan = box.run("file.delete", "share:docs/Inbox/a.pdf")
        assert plan["status"] == "done", plan
        assert (data / "state" / "reserve").stat().st_size == 2 * MiB
        _, undo = box.undo(plan["intents"][0]["action_id"])
        assert undo["status"] == "done" and (share / "Inbox" / "a.pdf").read_bytes() == b"%PDF a"
        assert verify_log(box.broker.config.audit_dir, box.broker.signer.public_key_pem()).ok
    finally:
        box.close()


def test_a_disk_that_fills_while_a_change_waits_for_its_press(data: Path) -> None:
    """Checked again when it runs: the press runs nothing, and says why."""
    share = data / "share"
    share.mkdir()
    (share / "a.pdf").write_bytes(b"%PDF a")
    box = Box(data, share, Clock(), low_free_bytes=4 * MiB, reserve_bytes=2 * MiB)
    try:
        r = box.http.post(
            "/v1/intents", json=intent("file.copy", "share:docs/a.pdf", to="share:docs/b.pdf")
        )
        assert r.status_code == 202
        fill_up(share / "film.mkv")
        assert box.approve()
        plan = box.wait(r.json()["plan_id"])
        assert plan["status"] == "failed"
        assert plan["intents"][0]["result"]["error"]["code"] == "disk_full"
        assert not (share / "b.pdf").exists()
        assert not [p for p in share.iterdir() if p.name.startswith(".appliance-tmp")]
    finally:
        box.close()


def test_a_copy_bigger_than_the_room_left_is_refused_first(data: Path) -> None:
    share = data / "share"
    share.mkdir()
    (share / "big.bin").write_bytes(os.urandom(20 * MiB))
    box = Box(data, share, Clock(), low_free_bytes=2 * MiB, reserve_bytes=1 * MiB)
    try:
        free = os.statvfs(data).f_bavail * os.statvfs(data).f_frsize
        assert 4 * MiB < free < 20 * MiB + 16 * MiB  # room for changes, not for the copy
        plan = box.run("file.copy", "share:docs/big.bin", to="share:docs/copy.bin")
        assert plan["status"] == "failed"
        error = plan["intents"][0]["result"]["error"]
        assert error["code"] == "insufficient_storage" and "no room for" in error["reason"]
        assert sorted(p.name for p in share.iterdir()) == ["big.bin"]
    finally:
        box.close()
