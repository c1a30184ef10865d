"""The audit log in segments: verifiable end to end, opened without reading
what is sealed, checked from a saved checkpoint on, moved from the earlier
layout, repaired after a crash at a segment's end, and a full disk."""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path

import pytest

from appliance.audit import (
    INDEX_FILE,
    AuditLog,
    AuditTampered,
    checkpoints_name,
    entries_name,
    verify_consistency,
    verify_inclusion,
    verify_log,
)
from appliance.audit import files as files_mod
from appliance.audit import opening as opening_mod
from appliance.errors import InsufficientStorage
from appliance.issuer.keys import UNSAFE_LABEL, DevKeyStore

S = 4  # entries a segment in these tests


@pytest.fixture
def signer(tmp_path: Path):
    return DevKeyStore(tmp_path / "keys").device_signer()


@pytest.fixture
def pem(signer) -> bytes:
    return signer.public_key_pem()


def open_log(path: Path, signer, **kw) -> AuditLog:
    return AuditLog(path, signer, signer_label=UNSAFE_LABEL, segment_entries=S, **kw)


def fill(path: Path, signer, n: int, start: int = 0) -> dict:
    with open_log(path, signer) as log:
        for i in range(start, start + n):
            log.append("test.event", {"n": i})
        return log.latest_checkpoint()


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def test_segments_hold_their_entries_and_verify_end_to_end(tmp_path: Path, signer, pem) -> None:
    d = tmp_path / "a"
    fill(d, signer, 18)
    for seg in range(4):  # 0..15 in four full segments, 16..17 in the fifth
        assert [json.loads(x)["index"] for x in lines(d / entries_name(seg))] == list(
            range(seg * S, seg * S + S)
        )
        # A batch never crosses a segment's end: each full one ends signed.
        assert json.loads(lines(d / checkpoints_name(seg))[-1])["tree_size"] == (seg + 1) * S
    assert len(lines(d / entries_name(4))) == 2
    index = [json.loads(x) for x in lines(d / INDEX_FILE)]
    assert [x["segment"] for x in index] == [0, 1, 2, 3] and index[0]["size"] == S
    report = verify_log(d, pem)
    assert report.ok, report.problems
    assert (report.entries, report.read_from) == (18, 0)
    assert report.newest is not None and report.newest["tree_size"] == 18


def test_concurrent_appends_across_segment_ends(tmp_path: Path, signer, pem) -> None:
    d = tmp_path / "a"
    log = open_log(d, signer)
    pool = [
        threading.Thread(target=lambda t=t: [log.append("x.y", {"t": t, "i": i}) for i in range(9)])
        for t in range(8)
    ]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    assert log.size == 72 and len(log.entries(0, 1000)) == 72
    log.close()
    assert verify_log(d, pem).ok


def test_proofs_and_old_entries_come_from_sealed_segments(tmp_path: Path, signer) -> None:
    d = tmp_path / "a"
    fill(d, signer, 13)
    with open_log(d, signer) as log:
        # Opening kept only the sealed segments' roots, not their hashes.
        assert log._tree.sealed == 12
        old = log.latest_checkpoint()
        for i in range(13, 23):
            log.append("test.event", {"n": i})
        new = log.latest_checkpoint()
        n, root = new["tree_size"], bytes.fromhex(new["root_hash"])
        for e in log.entries(0, 100):
            proof = [bytes.fromhex(h) for h in log.inclusion_proof(e["index"], n)]
            assert verify_inclusion(bytes.fromhex(e["leaf_hash"]), e["index"], n, proof, root)
        assert [e["data"]["n"] for e in log.entries(0, 100) if e["kind"] == "test.event"] == list(
            range(23)
        )
        for a in (1, 5, 12, old["tree_size"]):
            proof = [bytes.fromhex(h) for h in log.consistency_proof(a, n)]
            assert verify_consistency(a, n, log._tree.root(a), root, proof)


def test_opening_reads_only_what_is_not_sealed(
    tmp_path: Path, signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "a"
    fill(d, signer, 41)
    read: list[str] = []
    real = opening_mod.read_bytes

    def counting(path: Path) -> bytes:
        read.append(path.name)
        return real(path)

    monkeypatch.setattr(opening_mod, "read_bytes", counting)
    open_log(d, signer).close()
    # 41 entries: segments 0..9 sealed (by their index lines), only 10 is read.
    assert read == [checkpoints_name(10), entries_name(10)]


def test_an_edit_inside_a_sealed_segment_is_found(tmp_path: Path, signer, pem) -> None:
    """Opening does not read sealed segments; the full check does, and so
    does the broker whenever it serves their entries. New checkpoints keep
    signing the original history (the roots in the index), so the edit can
    never be passed off as what happened."""
    d = tmp_path / "a"
    fill(d, signer, 10)
    seg1 = d / entries_name(1)
    seg1.write_bytes(seg1.read_bytes().replace(b'"n":5', b'"n":6'))
    report = verify_log(d, pem)
    assert not report.ok
    text = " ".join(report.problems)
    assert "Entry 5 does not match the checkpoint" in text
    assert "The line of segment 1 in segments.jsonl does not match its files" in text
    with open_log(d, signer) as log:
        with pytest.raises(AuditTampered, match="changed on disk"):
            log.entries(4, 4)
        assert len(log.entries(8, 10)) == 2  # the rest still serves
        log.append("test.event", {"n": 10})
    report = verify_log(d, pem)
    assert not report.ok and "Entry 5 does not match" in " ".join(report.problems)


def test_a_changed_index_stops_the_broker(tmp_path: Path, signer, pem) -> None:
    d = tmp_path / "a"
    fill(d, signer, 10)
    index = [json.loads(x) for x in lines(d / INDEX_FILE)]
    index[0]["root_hash"] = "00" * 32
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    (d / INDEX_FILE).write_bytes(b"".join(json.dumps(x).encode() + b"\n" for x in index))
    before[INDEX_FILE] = (d / INDEX_FILE).read_bytes()
    with pytest.raises(AuditTampered):
        open_log(d, signer)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before  # left as found
    assert "The line of segment 0" in " ".join(verify_log(d, pem).problems)


def test_a_missing_segment_is_found(tmp_path: Path, signer, pem) -> None:
    d = tmp_path / "a"
    fill(d, signer, 14)
    (d / entries_name(1)).unlink()
    (d / checkpoints_name(1)).unlink()
    report = verify_log(d, pem)
    assert not report.ok and "segment(s) [1] are missing" in " ".join(report.problems)
    with pytest.raises(AuditTampered):
        open_log(d, signer)


def test_verify_from_a_saved_checkpoint_reads_only_what_came_after(
    tmp_path: Path, signer, pem
) -> None:
    d = tmp_path / "a"
    fill(d, signer, 10)
    saved = verify_log(d, pem).newest  # tree size 10, in segment 2
    fill(d, signer, 11, start=10)
    report = verify_log(d, pem, since=saved)
    assert report.ok, report.problems
    assert report.read_from == 8 and report.entries == 21
    assert report.newest["tree_size"] == 21
    # An edit after the saved checkpoint is found.
    seg = d / entries_name(3)
    good = seg.read_bytes()
    seg.write_bytes(good.replace(b'"n":13', b'"n":14'))
    report = verify_log(d, pem, since=saved)
    assert not report.ok and "Entry 13 does not match" in " ".join(report.problems)
    seg.write_bytes(good)
    # An edit before it is the full check's to find (the entries are not read again).
    seg = d / entries_name(0)
    seg.write_bytes(seg.read_bytes().replace(b'"n":1', b'"n":2'))
    assert verify_log(d, pem, since=saved).ok
    assert not verify_log(d, pem).ok


def test_a_saved_checkpoint_catches_a_fork_and_a_rollback(tmp_path: Path, signer, pem) -> None:
    d, fork = tmp_path / "a", tmp_path / "fork"
    fill(d, signer, 9)
    import shutil

    shutil.copytree(d, fork)
    saved = fill(d, signer, 6, start=9)  # size 15
    fill(fork, signer, 8, start=100)  # the copy goes its own way
    report = verify_log(fork, pem, since=saved)
    assert not report.ok
    assert "do not match the trusted checkpoint" in " ".join(report.problems)
    for seg in (2, 3):  # the newest segments cut away, index and all
        (d / entries_name(seg)).unlink()
        (d / checkpoints_name(seg)).unlink()
    index = lines(d / INDEX_FILE)[:2]
    (d / INDEX_FILE).write_bytes(b"".join(x + b"\n" for x in index))
    report = verify_log(d, pem, since=saved)
    assert not report.ok and "rolled back" in " ".join(report.problems)


def test_a_log_of_the_earlier_layout_is_moved_into_segments(tmp_path: Path, signer, pem) -> None:
    """A box updated from before segments: its one pair of files is checked,
    copied into segments byte for byte, and only then removed."""
    d = tmp_path / "a"
    with AuditLog(d, signer, signer_label=UNSAFE_LABEL) as log:  # one big segment
        for i in range(11):
            log.append("test.event", {"n": i})
        root = log.root_hash()
    old_entries = (d / entries_name(0)).read_bytes()
    (d / entries_name(0)).rename(d / "entries.jsonl")
    (d / checkpoints_name(0)).rename(d / "checkpoints.jsonl")
    assert verify_log(d, pem).ok  # the earlier layout verifies as it is
    with open_log(d, signer) as log:
        assert log.size == 11 and log.root_hash() == root
    assert not (d / "entries.jsonl").exists() and not (d / "checkpoints.jsonl").exists()
    assert b"".join((d / entries_name(s)).read_bytes() for s in range(3)) == old_entries
    assert len(lines(d / INDEX_FILE)) == 2
    assert verify_log(d, pem).ok


def test_an_old_layout_log_beside_a_different_segmented_one_is_left_alone(
    tmp_path: Path, signer
) -> None:
    d = tmp_path / "a"
    fill(d, signer, 6)
    (d / "entries.jsonl").write_bytes(b'{"index":0}\n')
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    with pytest.raises(AuditTampered, match="different entries"):
        open_log(d, signer)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before


def test_a_crash_at_a_segments_end_is_sealed_at_the_next_start(tmp_path: Path, signer, pem) -> None:
    d = tmp_path / "a"
    fill(d, signer, 7)  # the session-less log: 0..6; segment 0 sealed
    with open_log(d, signer) as log:
        log.append("test.event", {"n": 7})  # fills segment 1, sealed
    index = lines(d / INDEX_FILE)
    (d / INDEX_FILE).write_bytes(index[0] + b"\n" + index[1][:20])  # its line lost, torn
    with open_log(d, signer) as log:
        recovered = [e for e in log.entries(0, 100) if e["kind"] == "audit.recovered"]
        assert recovered[-1]["data"]["segments_sealed_at_open"] == [1]
    assert lines(d / INDEX_FILE)[:2] == index
    assert verify_log(d, pem).ok


def test_a_full_disk_is_a_507_and_the_log_goes_on(
    tmp_path: Path, signer, pem, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while writing: the batch is cut back, on_full may free room
    (one more try), else 507; the log stays open and verifies."""
    d = tmp_path / "a"
    freed: list[int] = []
    log = open_log(d, signer, on_full=lambda: freed.append(1) is None)
    log.append("test.event", {"n": 0})
    real = files_mod.write_all
    full = {"left": 1}

    def short(fd: int, data: bytes) -> None:
        if full["left"]:
            full["left"] -= 1
            os.write(fd, data[:3])  # a partial write, then no room
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(files_mod, "write_all", short)
    log.append("test.event", {"n": 1})  # on_full freed room: the retry worked
    assert freed == [1] and log.size == 2
    full["left"] = 2
    freed.clear()
    with pytest.raises(InsufficientStorage, match="disk is full") as info:
        log.append("test.event", {"n": 2})
    assert info.value.status == 507 and not log.closed
    full["left"] = 0
    assert log.append("test.event", {"n": 3})["index"] == 2
    log.close()
    report = verify_log(d, pem)
    assert report.ok and report.warnings == []


def test_appliance_audit_verify_saves_and_starts_from_a_checkpoint(tmp_path: Path, capsys) -> None:
    from appliance.cli import main

    keys = DevKeyStore(tmp_path / "keys")
    signer = keys.device_signer()
    assert (tmp_path / "keys" / "device.pub.pem").exists()
    fill(tmp_path / "audit", signer, 10)
    saved = tmp_path / "desk" / "checkpoint.json"
    saved.parent.mkdir()
    assert main(["audit", "verify", "--state-dir", str(tmp_path), "--save", str(saved)]) == 0
    assert json.loads(saved.read_text())["tree_size"] == 10
    fill(tmp_path / "audit", signer, 7, start=10)
    args = ["audit", "verify", "--state-dir", str(tmp_path), "--since", str(saved)]
    assert main([*args, "--save", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "checked from entry 8 on" in out and "audit log verifies" in out
    assert json.loads(saved.read_text())["tree_size"] == 17
