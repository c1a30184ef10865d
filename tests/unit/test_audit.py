"""The audit log: Merkle proofs against brute force, tampering detected, group
commit, crash recovery. Every tamper case edits the real files on disk and is
checked both by ``verify_log`` and by reopening (the broker must fail closed)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from appliance.audit import (
    EMPTY_ROOT,
    AuditLog,
    AuditTampered,
    MerkleTree,
    checkpoint_payload,
    checkpoints_name,
    entries_name,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
    verify_log,
)
from appliance.audit import reading as reading_mod
from appliance.audit import verify as verify_mod
from appliance.errors import ApplianceError, NotFound, Unavailable
from appliance.intents import canonical_json
from appliance.issuer.keys import UNSAFE_LABEL, DevKeyStore, verify_signature

ENTRIES_FILE, CHECKPOINTS_FILE = entries_name(0), checkpoints_name(0)

# -- a brute-force reference, straight from RFC 9162 section 2.1 ------------


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(hs: list[bytes]) -> bytes:
    if not hs:
        return hashlib.sha256(b"").digest()
    if len(hs) == 1:
        return hs[0]
    k = _k(len(hs))
    return hashlib.sha256(b"\x01" + ref_mth(hs[:k]) + ref_mth(hs[k:])).digest()


def ref_path(m: int, hs: list[bytes]) -> list[bytes]:
    if len(hs) == 1:
        return []
    k = _k(len(hs))
    if m < k:
        return ref_path(m, hs[:k]) + [ref_mth(hs[k:])]
    return ref_path(m - k, hs[k:]) + [ref_mth(hs[:k])]


def ref_subproof(m: int, hs: list[bytes], b: bool) -> list[bytes]:
    n = len(hs)
    if m == n:
        return [] if b else [ref_mth(hs)]
    k = _k(n)
    if m <= k:
        return ref_subproof(m, hs[:k], b) + [ref_mth(hs[k:])]
    return ref_subproof(m - k, hs[k:], False) + [ref_mth(hs[:k])]


def leaves(n: int) -> list[bytes]:
    return [hashlib.sha256(b"\x00" + f"leaf {i}".encode()).digest() for i in range(n)]


def flip(h: bytes) -> bytes:
    return bytes([h[0] ^ 1]) + h[1:]


# -- Merkle tree --------------------------------------------------------------


def test_hash_prefixes_are_rfc9162() -> None:
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert (
        node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    )
    assert MerkleTree().root() == EMPTY_ROOT == hashlib.sha256(b"").digest()


def test_roots_match_brute_force_for_every_size_and_past_size() -> None:
    hs = leaves(70)
    tree = MerkleTree()
    for n in range(71):
        assert tree.root() == ref_mth(hs[:n]), n
        if n < 70:
            tree.append_hash(hs[n])
    # Past sizes from the full tree, which come from the cached subtrees.
    for m in range(71):
        assert tree.root(m) == ref_mth(hs[:m]), m


def test_inclusion_proofs_match_brute_force_and_verify() -> None:
    hs = leaves(40)
    tree = MerkleTree(hs)
    for n in range(1, 41):
        root = ref_mth(hs[:n])
        for i in range(n):
            proof = tree.inclusion_proof(i, n)
            assert proof == ref_path(i, hs[:n]), (i, n)
            assert verify_inclusion(hs[i], i, n, proof, root)


def test_inclusion_proofs_fail_when_wrong() -> None:
    hs = leaves(21)
    tree = MerkleTree(hs)
    n = 21
    root = tree.root()
    for i in range(n):
        proof = tree.inclusion_proof(i)
        assert not verify_inclusion(flip(hs[i]), i, n, proof, root)  # another leaf
        assert not verify_inclusion(hs[i], (i + 1) % n, n, proof, root)  # another index
        assert not verify_inclusion(hs[i], i, n, proof, flip(root))  # another root
        assert not verify_inclusion(hs[i], i, 2 * n, proof, root)  # a size of another shape
        assert not verify_inclusion(hs[i], n, n, proof, root)  # index past the end
        assert not verify_inclusion(hs[i], i, n, proof[:-1], root)  # cut
        assert not verify_inclusion(hs[i], i, n, proof + [hs[0]], root)  # padded
        for j in range(len(proof)):
            bad = list(proof)
            bad[j] = flip(bad[j])
            assert not verify_inclusion(hs[i], i, n, bad, root)


def test_consistency_proofs_match_brute_force_and_verify() -> None:
    hs = leaves(40)
    tree = MerkleTree(hs)
    for n in range(1, 41):
        for m in range(0, n + 1):
            proof = tree.consistency_proof(m, n)
            expected = [] if m in (0, n) else ref_subproof(m, hs[:n], True)
            assert proof == expected, (m, n)
            assert verify_consistency(m, n, ref_mth(hs[:m]), ref_mth(hs[:n]), proof), (m, n)


def test_consistency_proofs_fail_when_wrong() -> None:
    hs = leaves(33)
    tree = MerkleTree(hs)
    other = MerkleTree(hs[:9] + leaves(40)[35:40] + hs[14:])  # a fork after entry 8
    for n in range(2, 34):
        new_root = tree.root(n)
        for m in range(1, n):
            proof = tree.consistency_proof(m, n)
            old_root = tree.root(m)
            assert not verify_consistency(m, n, flip(old_root), new_root, proof)
            assert not verify_consistency(m, n, old_root, flip(new_root), proof)
            assert not verify_consistency(m, n, old_root, new_root, [])
            assert not verify_consistency(m, n, old_root, new_root, proof[:-1])
            for j in range(len(proof)):
                bad = list(proof)
                bad[j] = flip(bad[j])
                assert not verify_consistency(m, n, old_root, new_root, bad)
            if m > 9 and n <= other.size:
                # A forked history has a different root at m: no proof links them.
                assert not verify_consistency(m, n, other.root(m), new_root, proof)
    assert not verify_consistency(5, 4, tree.root(5), tree.root(4), [])


def test_truncate_undoes_appends() -> None:
    hs = leaves(37)
    tree = MerkleTree(hs)
    tree.truncate(22)
    assert tree.size == 22 and tree.root() == ref_mth(hs[:22])
    for h in leaves(50)[40:50]:
        tree.append_hash(h)
    assert tree.root() == ref_mth(hs[:22] + leaves(50)[40:50])


# -- the log --------------------------------------------------------------------


@pytest.fixture
def signer(tmp_path: Path):
    return DevKeyStore(tmp_path / "keys").device_signer()


@pytest.fixture
def pem(signer) -> bytes:
    return signer.public_key_pem()


def open_log(path: Path, signer) -> AuditLog:
    return AuditLog(path, signer, signer_label=UNSAFE_LABEL)


def make_log(path: Path, signer, n: int = 8) -> dict:
    """n entries appended one at a time, so one checkpoint per entry (plus size 0)."""
    with open_log(path, signer) as log:
        for i in range(n):
            log.append("test.event", {"n": i, "who": "alice"})
        return log.latest_checkpoint()


def lines(path: Path, name: str = ENTRIES_FILE) -> list[bytes]:
    return (path / name).read_bytes().split(b"\n")[:-1]


def write_lines(path: Path, items: list[bytes], name: str = ENTRIES_FILE) -> None:
    (path / name).write_bytes(b"".join(x + b"\n" for x in items))


def assert_tampered(path: Path, signer, pem: bytes, *needles: str) -> list[str]:
    """verify_log reports every needle, and the broker refuses to open the log
    without touching the evidence."""
    report = verify_log(path, pem)
    assert not report.ok
    text = " ".join(report.problems)
    for needle in needles:
        assert needle in text, (needle, report.problems)
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    with pytest.raises(AuditTampered) as info:
        open_log(path, signer)
    assert info.value.code == "audit_tampered" and info.value.status == 503
    assert isinstance(info.value, ApplianceError)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    return report.problems


def test_clean_log_verifies_and_marks_unsafe_signer(tmp_path: Path, signer, pem) -> None:
    make_log(tmp_path / "a", signer)
    report = verify_log(tmp_path / "a", pem)
    assert report.ok and report.problems == [] and report.warnings == []
    assert report.entries == 8 and report.checkpoints == 9  # size 0, then one per entry
    assert report.unsafe_signer


def test_entry_format_is_canonical_json_and_leaf_is_the_line(tmp_path: Path, signer) -> None:
    with open_log(tmp_path / "a", signer) as log:
        odd = {"text": 'line\nbreak \u2028 é "q"', "z": [1, 2.5, None], "a": True}
        entry = log.append("intent.executed", odd)
        assert entry["index"] == 0 and entry["kind"] == "intent.executed"
        assert entry["data"] == odd and entry["time"].endswith("Z")
        stored = lines(tmp_path / "a")
        assert len(stored) == 1
        plain = {k: entry[k] for k in ("index", "time", "kind", "data")}
        assert stored[0] == canonical_json(plain)
        assert entry["leaf_hash"] == leaf_hash(stored[0]).hex()
        assert log.entries(0, 10) == [entry]
    assert verify_log(tmp_path / "a", signer.public_key_pem()).ok


def test_checkpoint_is_signed_by_the_device_key(tmp_path: Path, signer, pem) -> None:
    cp = make_log(tmp_path / "a", signer, 3)
    assert set(cp) == {
        "tree_size",
        "root_hash",
        "time",
        "key_id",
        "signer",
        "boot_count",
        "signature",
    }
    assert cp["tree_size"] == 3 and cp["signer"] == UNSAFE_LABEL
    import base64

    sig = base64.b64decode(cp["signature"])
    assert verify_signature(pem, checkpoint_payload(cp), sig)
    assert not verify_signature(pem, checkpoint_payload(dict(cp, tree_size=2)), sig)


def test_edited_entry_is_detected(tmp_path: Path, signer, pem) -> None:
    d = tmp_path / "a"
    make_log(d, signer)
    items = lines(d)
    assert b'"n":3' in items[3]
    items[3] = items[3].replace(b'"n":3', b'"n":4')  # one byte
    write_lines(d, items)
    assert_tampered(d, signer, pem, "Entry 3 does not match")


def test_swapped_entries_are_detected(tmp_path: Path, signer, pem) -> None:
    d = tmp_path / "a"
    make_log(d, signer)
    items = lines(d)
    items[2], items[5] = items[5], items[2]
    write_lines(d, items)
    assert_tampered(
        d,
        signer,
        pem,
        f"Line 3 of {ENTRIES_FILE}, where entry 2 belongs, holds an entry with index 5",
        f"Line 6 of {ENTRIES_FILE}, where entry 5 belongs, holds an entry with index 2",
    )


def test_inserted_entry_is_detected(tmp_path: Path, signer, pem) -> None:
    d = tmp_path / "a"
    make_log(d, signer)
    items = lines(d)
    forged = canonical_json(
        {"index": 4, "time": "2024-01-01T00:00:00.000000Z", "kind": "test.event", "data": {}}
    )
    write_lines(d, items[:4] + [forged] + items[4:])
    assert_tampered(
        d,
        signer,
        pem,
        "Entry 4 does not match",
        f"Line 6 of {ENTRIES_FILE}, where entry 5 belongs, holds an entry with index 4",
    )


def test_inserted_entry_with_renumbering_is_detected(tmp_path: Path, signer, pem) -> None:
    d = tmp_path / "a"
    make_log(d, signer)
    entries = [json.loads(x) for x in lines(d)]
    entries.insert(4, {"index": 4, "time": entries[3]["time"], "kind": "test.event", "data": {}})
    for i, e in enumerate(entries):
        e["index"] = i  # a careful forger keeps the sequence intact
    write_lines(d, [canonical_json(e) for e in entries])
    assert_tampered(d, signer, pem, "Entry 4 does not match")


def test_deleted_entry_is_detected(tmp_path: Path, signer, pem) -> None:
    d = tmp_path / "a"
    make_log(d, signer)
    items = lines(d)
    del items[4]
    write_lines(d, items)
    assert_tampered(
        d,
        signer,
        pem,
        f"Line 5 of {ENTRIES_FILE}, where entry 4 belongs, holds an entry with index 5",
        "entry 7 is missing",
    )


def test_truncated_log_is_detected(tmp_path: Path, signer, pem) -> None:
    d = tmp_path / "a"
    make_log(d, signer)
    write_lines(d, lines(d)[:6])
    assert_tampered(d, signer, pem, "entries 6..7 are missing (the log was truncated)")


def test_replaced_signature_is_detected(tmp_path: Path, signer, pem) -> None:
    d = tmp_path / "a"
    make_log(d, signer)
    cps = [json.loads(x) for x in lines(d, CHECKPOINTS_FILE)]
    cps[-1]["signature"] = cps[-2]["signature"]  # a real signature, over something else
    write_lines(d, [canonical_json(c) for c in cps], CHECKPOINTS_FILE)
    assert_tampered(
        d,
        signer,
        pem,
        f"line 9 of {CHECKPOINTS_FILE} (tree size 8) has a signature that does not verify",
    )


def test_resigned_with_another_key_is_detected(tmp_path: Path, signer, pem) -> None:
    """The forger edits an entry and re-signs every checkpoint with a key of his own,
    once under his own key id and once claiming the device's."""
    other = DevKeyStore(tmp_path / "other").device_signer()
    import base64

    for claim in (other.key_id, signer.key_id):
        d = tmp_path / f"a-{claim}"
        make_log(d, signer)
        items = lines(d)
        items[3] = items[3].replace(b'"n":3', b'"n":4')
        write_lines(d, items)
        tree = MerkleTree(leaf_hash(x) for x in items)
        cps = []
        for c in (json.loads(x) for x in lines(d, CHECKPOINTS_FILE)):
            c.update(root_hash=tree.root(c["tree_size"]).hex(), key_id=claim)
            c["signature"] = base64.b64encode(other.sign(checkpoint_payload(c))).decode()
            cps.append(canonical_json(c))
        write_lines(d, cps, CHECKPOINTS_FILE)
        needle = "neither the device key" if claim == other.key_id else "does not verify"
        assert_tampered(d, signer, pem, needle)


def test_bad_signature_on_an_older_checkpoint_is_detected(tmp_path: Path, signer, pem) -> None:
    d = tmp_path / "a"
    make_log(d, signer)
    cps = [json.loads(x) for x in lines(d, CHECKPOINTS_FILE)]
    cps[3]["signature"] = cps[4]["signature"]
    write_lines(d, [canonical_json(c) for c in cps], CHECKPOINTS_FILE)
    report = verify_log(d, pem)
    assert not report.ok
    assert (
        f"line 4 of {CHECKPOINTS_FILE} (tree size 3) has a signature that does not verify"
        in report.problems[0]
    )


def test_checkpoints_going_backwards_are_detected(tmp_path: Path, signer, pem) -> None:
    d = tmp_path / "a"
    make_log(d, signer)
    cps = lines(d, CHECKPOINTS_FILE)
    cps[3], cps[6] = cps[6], cps[3]
    write_lines(d, cps, CHECKPOINTS_FILE)
    assert_tampered(d, signer, pem, "checkpoints went backwards")


def test_deleted_checkpoints_file_is_detected(tmp_path: Path, signer, pem) -> None:
    d = tmp_path / "a"
    make_log(d, signer)
    (d / CHECKPOINTS_FILE).unlink()
    assert_tampered(d, signer, pem, "no checkpoint at all")


def test_rollback_needs_a_trusted_checkpoint(tmp_path: Path, signer, pem) -> None:
    """Cutting the tail of both files is invisible locally (documented); a
    checkpoint a desktop saved earlier catches it."""
    d = tmp_path / "a"
    trusted = make_log(d, signer)  # tree size 8
    write_lines(d, lines(d)[:5])
    write_lines(d, lines(d, CHECKPOINTS_FILE)[:6], CHECKPOINTS_FILE)  # sizes 0..5
    assert verify_log(d, pem).ok  # the local limit
    report = verify_log(d, pem, trusted_checkpoint=trusted)
    assert not report.ok
    assert "entries 5..7 are gone (the log was rolled back)" in " ".join(report.problems)


def test_cut_checkpoints_are_caught_by_a_trusted_checkpoint(tmp_path: Path, signer, pem) -> None:
    d = tmp_path / "a"
    trusted = make_log(d, signer)
    write_lines(d, lines(d, CHECKPOINTS_FILE)[:6], CHECKPOINTS_FILE)
    report = verify_log(d, pem, trusted_checkpoint=trusted)
    assert not report.ok and "checkpoints stop at 5" in " ".join(report.problems)


def test_fork_is_caught_by_a_trusted_checkpoint(tmp_path: Path, signer, pem) -> None:
    """A copy taken at size 5 and continued differently (a restored backup)
    is signed by the real key but no longer extends what the desktop saw."""
    d, fork = tmp_path / "a", tmp_path / "fork"
    make_log(d, signer, 5)
    shutil.copytree(d, fork)
    with open_log(d, signer) as log:
        for i in range(3):
            log.append("test.event", {"n": 5 + i})
        trusted = log.latest_checkpoint()  # size 8
    with open_log(fork, signer) as log:
        for i in range(4):
            log.append("test.event", {"n": 50 + i})
    assert verify_log(fork, pem).ok  # alone, the fork is a good log
    report = verify_log(fork, pem, trusted_checkpoint=trusted)
    assert not report.ok
    assert "Entries 0..7 do not match the trusted checkpoint" in " ".join(report.problems)


def test_trusted_checkpoint_accepts_an_honest_extension(tmp_path: Path, signer, pem) -> None:
    d = tmp_path / "a"
    trusted = make_log(d, signer, 5)
    with open_log(d, signer) as log:
        for i in range(6):
            log.append("test.event", {"n": i})
    report = verify_log(d, pem, trusted_checkpoint=trusted)
    assert report.ok, report.problems


def test_trusted_checkpoint_must_be_signed(tmp_path: Path, signer, pem) -> None:
    d = tmp_path / "a"
    trusted = make_log(d, signer, 5)
    forged = dict(trusted, tree_size=4)
    report = verify_log(d, pem, trusted_checkpoint=forged)
    assert not report.ok and "not signed by the device key" in report.problems[0]


def test_proofs_from_the_log_verify_against_a_checkpoint(tmp_path: Path, signer) -> None:
    with open_log(tmp_path / "a", signer) as log:
        for i in range(13):
            log.append("test.event", {"n": i})
        old = log.latest_checkpoint()
        for i in range(9):
            log.append("test.event", {"n": i})
        new = log.latest_checkpoint()
        n, root = new["tree_size"], bytes.fromhex(new["root_hash"])
        for e in log.entries(0, 100):
            proof = [bytes.fromhex(h) for h in log.inclusion_proof(e["index"], n)]
            lh = bytes.fromhex(e["leaf_hash"])
            assert verify_inclusion(lh, e["index"], n, proof, root)
            assert not verify_inclusion(flip(lh), e["index"], n, proof, root)
        cproof = [bytes.fromhex(h) for h in log.consistency_proof(old["tree_size"], n)]
        old_root = bytes.fromhex(old["root_hash"])
        assert verify_consistency(old["tree_size"], n, old_root, root, cproof)
        assert not verify_consistency(old["tree_size"], n, flip(old_root), root, cproof)
        with pytest.raises(NotFound):
            log.inclusion_proof(22, 22)
        with pytest.raises(NotFound):
            log.consistency_proof(3, 23)
        assert log.entries(20, 100) == log.entries(0, 100)[20:]


def test_concurrent_appends_group_commit(tmp_path: Path, signer, pem, monkeypatch) -> None:
    calls = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        calls.append(fd)
        real_fsync(fd)

    log = open_log(tmp_path / "a", signer)
    monkeypatch.setattr(os, "fsync", counting_fsync)
    f0 = log.fsync_count
    threads, per = 32, 8
    start = threading.Barrier(threads)
    results: list[dict] = []
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        start.wait()
        try:
            for i in range(per):
                results.append(log.append("test.event", {"thread": t, "i": i}))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    appends = threads * per
    assert not errors
    assert sorted(e["index"] for e in results) == list(range(appends))
    assert len(calls) < appends, f"{len(calls)} fsyncs for {appends} appends: no group commit"
    assert log.batch_count < appends / 2
    # Every batch made its entries and its checkpoint durable: two fsyncs each.
    assert len(calls) == log.fsync_count - f0 == 2 * log.batch_count
    stored = {e["index"]: e for e in log.entries(0, 1000)}
    assert all(stored[e["index"]] == e for e in results)
    assert log.latest_checkpoint()["tree_size"] == appends
    log.close()
    report = verify_log(tmp_path / "a", pem)
    assert report.ok and report.entries == appends


def test_torn_tail_is_cut_and_recorded(tmp_path: Path, signer, pem) -> None:
    d = tmp_path / "a"
    make_log(d, signer, 3)
    with open_log(d, signer) as log:
        root3 = log.root_hash()
    torn = b'{"data":{"n":3,"who":"alice"},"ind'
    with (d / ENTRIES_FILE).open("ab") as f:
        f.write(torn)
    report = verify_log(d, pem)  # a crash, not tampering
    assert report.ok and "without a newline" in report.warnings[0]
    with open_log(d, signer) as log:
        assert log.size == 4
        rec = log.entries(3, 1)[0]
        assert rec["kind"] == "audit.recovered" and rec["data"]["dropped_bytes"] == len(torn)
        assert log.latest_checkpoint()["tree_size"] == 4
        proof = [bytes.fromhex(h) for h in log.consistency_proof(3)]
        assert verify_consistency(3, 4, bytes.fromhex(root3), bytes.fromhex(log.root_hash()), proof)
    assert not (d / ENTRIES_FILE).read_bytes().endswith(torn)
    assert verify_log(d, pem).ok and verify_log(d, pem).warnings == []


def test_torn_checkpoint_and_unsigned_batch_are_repaired(tmp_path: Path, signer, pem) -> None:
    """A crash between the entries' fsync and the checkpoint's: the batch is on
    disk, its checkpoint half-written."""
    d = tmp_path / "a"
    make_log(d, signer, 3)
    line = canonical_json(
        {"index": 3, "time": "2024-01-01T00:00:00.000000Z", "kind": "test.event", "data": {}}
    )
    with (d / ENTRIES_FILE).open("ab") as f:
        f.write(line + b"\n")
    with (d / CHECKPOINTS_FILE).open("ab") as f:
        f.write(b'{"key_id":"')
    report = verify_log(d, pem)
    assert report.ok and any("not yet covered by a signed checkpoint" in w for w in report.warnings)
    with open_log(d, signer) as log:
        assert log.size == 5
        rec = log.entries(4, 1)[0]["data"]
        assert rec["checkpointed_at_open"] == 1 and rec["dropped_checkpoint_bytes"] == 11
        assert log.entries(3, 1)[0]["data"] == {}
    report = verify_log(d, pem)
    assert report.ok and report.warnings == []


def test_too_many_unsigned_entries_are_refused(tmp_path: Path, signer, pem, monkeypatch) -> None:
    monkeypatch.setattr(verify_mod, "MAX_BATCH", 2)
    d = tmp_path / "a"
    make_log(d, signer, 3)
    extra = [
        canonical_json({"index": i, "time": "2024-01-01T00:00:00Z", "kind": "x.y", "data": {}})
        for i in range(3, 6)
    ]
    write_lines(d, lines(d) + extra)
    assert_tampered(d, signer, pem, "Entries 3..5 (3 entries) are covered by no signed checkpoint")


def test_reopen_preserves_root_and_is_exclusive(tmp_path: Path, signer) -> None:
    d = tmp_path / "a"
    with open_log(d, signer) as log:
        for i in range(10):
            log.append("test.event", {"n": i})
        root, cp = log.root_hash(), log.latest_checkpoint()
        with pytest.raises(Unavailable):
            open_log(d, signer)  # one writer at a time
    with open_log(d, signer) as log:
        assert log.size == 10 and log.root_hash() == root and log.latest_checkpoint() == cp
        log.append("test.event", {"n": 10})
        assert log.size == 11 and log.root_hash() != root


class FlakySigner:
    """The real signer, until told to fail (a TPM that stops answering)."""

    def __init__(self, inner) -> None:
        self.inner, self.fail = inner, False
        self.key_id, self.unsafe = inner.key_id, inner.unsafe

    def sign(self, data: bytes) -> bytes:
        if self.fail:
            raise OSError("TPM not responding")
        return self.inner.sign(data)

    def public_key_pem(self) -> bytes:
        return self.inner.public_key_pem()


def test_a_signer_that_fails_leaves_nothing_written_and_the_log_recovers(
    tmp_path: Path, signer, pem
) -> None:
    """A TPM that stops answering: the batch is refused unwritten (no entry
    without its signed checkpoint), and appends work again once it is back."""
    d = tmp_path / "a"
    flaky = FlakySigner(signer)
    log = open_log(d, flaky)
    log.append("test.event", {"n": 0})
    before = {p: (d / p).read_bytes() for p in (ENTRIES_FILE, CHECKPOINTS_FILE)}
    flaky.fail = True
    with pytest.raises(Unavailable, match="TPM not responding"):
        log.append("test.event", {"n": 1})
    assert {p: (d / p).read_bytes() for p in before} == before  # nothing half-done
    assert log.size == 1 and not log.closed
    flaky.fail = False
    entry = log.append("test.event", {"n": 2})
    assert entry["index"] == 1 and log.size == 2
    log.close()
    assert verify_log(d, pem).ok


def test_waiting_appenders_learn_their_batch_was_dropped(tmp_path: Path, signer) -> None:
    class SlowFailing(FlakySigner):
        def sign(self, data: bytes) -> bytes:
            time.sleep(0.05)  # let other appenders queue behind this batch
            return super().sign(data)

    slow = SlowFailing(signer)
    log = open_log(tmp_path / "a", slow)
    slow.fail = True
    errors: list[BaseException] = []

    def one(n: int) -> None:
        try:
            log.append("test.event", {"n": n})
        except Unavailable as e:
            errors.append(e)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    assert len(errors) == 8 and log.size == 0
    slow.fail = False
    assert log.append("test.event", {"n": 9})["index"] == 0
    log.close()


def test_bad_appends_are_refused_without_using_an_index(tmp_path: Path, signer) -> None:
    with open_log(tmp_path / "a", signer) as log:
        with pytest.raises(ApplianceError, match="reserved"):
            log.append("audit.recovered", {})
        with pytest.raises(ApplianceError, match="dotted"):
            log.append("Bad Kind", {})
        with pytest.raises(ApplianceError, match="not JSON"):
            log.append("test.event", {"x": object()})
        with pytest.raises(ApplianceError, match="JSON object"):
            log.append("test.event", [1])  # type: ignore[arg-type]
        assert log.append("test.event", {})["index"] == 0


def test_unsafe_signer_must_say_so(tmp_path: Path, signer) -> None:
    with pytest.raises(ValueError):
        AuditLog(tmp_path / "a", signer, signer_label="tpm")


def test_closed_log_refuses(tmp_path: Path, signer) -> None:
    log = open_log(tmp_path / "a", signer)
    assert not log.closed and log.failure is None
    log.close()
    assert log.closed
    with pytest.raises(Unavailable):
        log.append("test.event", {})
    with pytest.raises(Unavailable):
        log.entries(0, 1)


def test_verify_beside_a_running_broker_sees_no_problem(
    tmp_path: Path, signer, pem, monkeypatch
) -> None:
    """verify_log reads a live log: a batch that completes between its two file
    reads must show up as a warning at most, never as a truncation."""
    d = tmp_path / "a"
    log = open_log(d, signer)
    log.append("test.event", {"n": 0})
    real_read = reading_mod._read
    reads: list[str] = []

    def read_then_append(path: Path) -> bytes:
        data = real_read(path)
        if not reads:
            log.append("test.event", {"n": len(reads)})  # a whole batch lands now
        reads.append(path.name)
        return data

    monkeypatch.setattr(reading_mod, "_read", read_then_append)
    report = verify_log(d, pem)
    log.close()
    assert len(reads) == 2
    assert report.ok, report.problems


def test_boot_count_is_signed_and_may_not_go_backwards(tmp_path: Path) -> None:
    """Each checkpoint carries the TPM boot counter; a log whose counts go back
    (checkpoints spliced in from an older run) is refused."""
    keys = DevKeyStore(tmp_path / "keys")
    signer = keys.device_signer()
    log = AuditLog(tmp_path / "a", signer, signer_label=UNSAFE_LABEL, boot_count=7)
    log.append("test.event", {"n": 1})
    assert log.latest_checkpoint()["boot_count"] == 7
    log.boot_count = 5
    log.append("test.event", {"n": 2})
    log.close()
    report = verify_log(tmp_path / "a", signer.public_key_pem())
    assert not report.ok
    assert any("boot counter went backwards" in p for p in report.problems)


def test_a_failed_write_fails_closed_until_reopened(
    tmp_path: Path, signer, pem, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a write or fsync fails nobody can say what reached the disk: the
    batch is cut back and the log refuses appends until it is reopened."""
    d = tmp_path / "a"
    log = open_log(d, signer)
    log.append("test.event", {"n": 0})
    before = {p: (d / p).read_bytes() for p in (ENTRIES_FILE, CHECKPOINTS_FILE)}
    real = os.fsync
    calls = {"n": 0}

    def failing_fsync(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("disk gone")
        real(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(Unavailable, match="disk gone"):
        log.append("test.event", {"n": 1})
    monkeypatch.undo()
    assert log.closed and "restart" in (log.failure or "")
    with pytest.raises(Unavailable):
        log.append("test.event", {"n": 2})
    log.close()
    assert {p: (d / p).read_bytes() for p in before} == before
    assert verify_log(d, pem).ok


def _session(unsafe: bool = True):
    from appliance.issuer.keys import ephemeral_signer

    return ephemeral_signer(unsafe=unsafe)


def test_session_keys_vouched_by_the_device_key_sign_checkpoints(
    tmp_path: Path, signer, pem
) -> None:
    d = tmp_path / "a"
    first = _session()
    with AuditLog(d, signer, signer_label=UNSAFE_LABEL, session_signer=first) as log:
        log.append("test.event", {"n": 1})
        assert log.latest_checkpoint()["key_id"] == first.key_id
    second = _session()  # the next start: a new in-memory key
    with AuditLog(d, signer, signer_label=UNSAFE_LABEL, session_signer=second) as log:
        log.append("test.event", {"n": 2})
        kinds = [e["kind"] for e in log.entries(0, 100)]
        assert kinds.count("audit.session") == 2
        assert log.latest_checkpoint()["key_id"] == second.key_id
    assert verify_log(d, pem).ok


def test_a_session_key_the_device_did_not_vouch_for_is_refused(tmp_path: Path, signer, pem) -> None:
    """An attacker's own 'session' key, vouched for by another device key,
    cannot sign checkpoints of this box's log."""
    other = DevKeyStore(tmp_path / "other").device_signer()
    d = tmp_path / "a"
    with AuditLog(d, other, signer_label=UNSAFE_LABEL, session_signer=_session()) as log:
        log.append("test.event", {"n": 1})
    report = verify_log(d, pem)
    assert not report.ok
    assert any("did not vouch" in p or "neither the device key" in p for p in report.problems)
