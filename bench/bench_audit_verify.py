"""Audit log verification at 10^5 and 10^6 entries: the full check, the check
from a saved checkpoint, and opening the log, each beside its raw baseline
in the same run.

The log is written by the log's own encoders (canonical JSON entries, a
checkpoint signed by a development key every ``--every`` entries, never
across a segment's end, each full segment sealed into the index), straight
to disk: appending a million entries through ``AuditLog`` would take its two
fsyncs per batch a million times over. ``AuditLog`` then opens it and
appends to it, which proves it is a log the broker accepts.

* full: ``verify_log`` (every entry parsed and hashed, every checkpoint's
  signature and root checked); raw: reading every file and hashing every
  line (the least any verifier does);
* from a saved checkpoint: ``verify_log(since=...)``, the checkpoint saved
  when the log held 99 % of its entries; raw: the same for the lines read;
* open: ``AuditLog(...)`` (verify the unsealed segment, the newest
  signature, rebuild the tree from the index); raw: reading the files of
  the newest segment.

Logs: 10^5 entries with a checkpoint per entry (a quiet box: every append
alone), and 10^5 and 10^6 with one per 16 entries (a busier one).

    python bench/bench_audit_verify.py [--quick]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from appliance.audit import (  # noqa: E402
    INDEX_FILE,
    SEGMENT_ENTRIES,
    AuditLog,
    MerkleTree,
    checkpoint_payload,
    checkpoints_name,
    entries_name,
    leaf_hash,
    verify_log,
)
from appliance.audit.segments import list_segments, seal_line  # noqa: E402
from appliance.intents import canonical_json  # noqa: E402
from appliance.issuer.keys import UNSAFE_LABEL, DevKeyStore, Signer  # noqa: E402

DATA = {
    "plan_id": "plan_5f2a9c0e1b7d3a44",
    "action_id": "act_0c9e7f3b2a1d4e55",
    "verb": "file.move",
    "resource": "share:docs/Inbox/2024/invoice-0042.pdf",
    "token_id": "tok_93b1",
    "result": {"to": "share:docs/Archive/2024/invoice-0042.pdf", "type": "file"},
}


def generate(directory: Path, n: int, every: int, signer: Signer) -> dict:
    """A log of ``n`` entries with a checkpoint every ``every`` entries;
    returns the checkpoint written when the log held 99 % of them."""
    size = SEGMENT_ENTRIES
    directory.mkdir(parents=True)
    tree = MerkleTree.from_segments(size, [], lambda seg: [])
    saved: dict = {}
    efile = cfile = None
    index = b""

    def checkpoint(t: int) -> dict:
        cp = {
            "tree_size": t,
            "root_hash": tree.root(t).hex(),
            "time": "2026-01-01T00:00:00.000000Z",
            "key_id": signer.key_id,
            "signer": UNSAFE_LABEL,
            "boot_count": 1,
        }
        cp["signature"] = base64.b64encode(signer.sign(checkpoint_payload(cp))).decode()
        return cp

    lines: list[bytes] = []
    for i in range(n):
        seg = i // size
        if i % size == 0:
            if efile:
                efile.close()
                cfile.close()
            efile = (directory / entries_name(seg)).open("wb")
            cfile = (directory / checkpoints_name(seg)).open("wb")
            if i == 0:
                cfile.write(canonical_json(checkpoint(0)) + b"\n")
            lines = []
        line = canonical_json(
            {"index": i, "time": "2026-01-01T00:00:00.000000Z", "kind": "action.done", "data": DATA}
        )
        efile.write(line + b"\n")
        lines.append(line)
        tree.append_hash(leaf_hash(line))
        t = i + 1
        if t % every == 0 or t % size == 0 or t == n:
            cp = checkpoint(t)
            cfile.write(canonical_json(cp) + b"\n")
            if t <= n * 99 // 100:
                saved = cp
        if t % size == 0:
            efile.flush()
            cfile.flush()
            index += seal_line(directory, seg, size, lines, []).to_line() + b"\n"
            tree.prune()
    efile.close()
    cfile.close()
    (directory / INDEX_FILE).write_bytes(index)
    return saved


def hash_files(directory: Path, segments: list[int]) -> int:
    """The raw baseline: read the files, hash every entry line."""
    count = 0
    for seg in segments:
        for name in (entries_name(seg), checkpoints_name(seg)):
            data = (directory / name).read_bytes()
            if name.startswith("entries"):
                for line in data.split(b"\n")[:-1]:
                    hashlib.sha256(b"\x00" + line).digest()
                    count += 1
    return count


def timed(fn):  # noqa: ANN001, ANN201
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small logs, for smoke tests")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    shapes = (
        ((2_000, 1), (20_000, 16)) if args.quick else ((100_000, 1), (100_000, 16), (1_000_000, 16))
    )
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        root = Path(tmp)
        signer = DevKeyStore(root / "keys").device_signer()
        pem = signer.public_key_pem()
        print(
            f"audit verify bench ({'quick' if args.quick else 'full'}), segments of "
            f"{SEGMENT_ENTRIES} entries"
        )
        head = (
            f"{'entries':>9} {'cp every':>8} {'what':<32} {'seconds':>9} {'raw s':>8} "
            f"{'x raw':>6} {'read':>9}"
        )
        print(head)
        print("-" * len(head))
        for n, every in shapes:
            d = root / f"log-{n}-{every}"
            gen_s, saved = timed(lambda d=d, n=n, every=every: generate(d, n, every, signer))
            segments = list_segments(d)
            full_s, report = timed(lambda d=d: verify_log(d, pem))
            assert report.ok and report.entries == n, report.problems[:3]
            raw_s, _ = timed(lambda d=d, s=segments: hash_files(d, s))
            inc_s, inc = timed(lambda d=d, saved=saved: verify_log(d, pem, since=saved))
            assert inc.ok, inc.problems[:3]
            first = inc.read_from // SEGMENT_ENTRIES
            raw_inc_s, _ = timed(lambda d=d, s=segments[first:]: hash_files(d, s))
            open_s, log = timed(
                lambda d=d: AuditLog(d, signer, signer_label=UNSAFE_LABEL, boot_count=2)
            )
            log.append("bench.done", {"n": n})
            log.close()
            raw_open_s, _ = timed(lambda d=d, s=segments[-1:]: hash_files(d, s))
            rows = (
                ("full check", full_s, raw_s, n),
                (f"from the checkpoint at {saved['tree_size']:,}", inc_s, raw_inc_s,
                 n - inc.read_from),
                ("open (broker start)", open_s, raw_open_s, n - segments[-1] * SEGMENT_ENTRIES),
            )  # fmt: skip
            for what, s, raw, read in rows:
                print(
                    f"{n:>9,} {every:>8} {what:<32} {s:>9.3f} {raw:>8.3f} {s / raw:>6.1f} "
                    f"{read:>9,}"
                )
            disk = sum(p.stat().st_size for p in d.iterdir())
            print(
                f"{'':>18} (generated in {gen_s:.1f} s; {report.checkpoints:,} checkpoints; "
                f"{disk / n:.0f} bytes on disk per entry)"
            )
            assert verify_log(d, pem, since=saved).ok


if __name__ == "__main__":
    main()
