"""Audit log throughput: group commit against one write+fsync per append.

Measures, in the same run and on the same disk, appends per second, p50/p99
latency and fsyncs per append for

* baseline: each append writes its line and fsyncs (a mutex serialises
  threads), no Merkle tree, no signature: the cheapest durable log there is;
* AuditLog: Merkle tree, a signed checkpoint per batch, two fsyncs per batch,
  group commit across threads;

with 1 and 32 threads, then the time to reopen (verify) and ``verify_log`` the
log written. Run: ``.venv/bin/python bench/bench_audit.py [--quick]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from appliance.audit import AuditLog, verify_log  # noqa: E402
from appliance.intents import canonical_json  # noqa: E402
from appliance.issuer.keys import UNSAFE_LABEL, DevKeyStore  # noqa: E402

DATA = {
    "verb": "file.move",
    "resource": "share:docs/inbox/2024/invoice-0042.pdf",
    "to": "share:docs/archive/2024/invoice-0042.pdf",
    "requester": "desktop-7f3a",
    "digest": "9" * 64,
}


class Baseline:
    """One write + one fsync per append, serialised by a mutex."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.lock = threading.Lock()
        self.index = 0
        self.fsyncs = 0

    def append(self, kind: str, data: dict) -> None:
        with self.lock:
            line = canonical_json({"index": self.index, "time": "t", "kind": kind, "data": data})
            os.write(self.fd, line + b"\n")
            os.fsync(self.fd)
            self.fsyncs += 1
            self.index += 1

    def close(self) -> None:
        os.close(self.fd)


def run(append: Callable[[str, dict], object], threads: int, per_thread: int) -> dict:
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads + 1)

    def worker() -> None:
        mine = []
        barrier.wait()
        for _ in range(per_thread):
            t0 = time.perf_counter()
            append("bench.event", DATA)
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - t0
    latencies.sort()
    n = len(latencies)
    return {
        "appends": n,
        "rate": n / elapsed,
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, for smoke tests")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the dev key store warns on every start
    single = 200 if args.quick else 3000
    per32 = 10 if args.quick else 200

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        root = Path(tmp)
        signer = DevKeyStore(root / "keys").device_signer()
        rows = []
        for threads, per in ((1, single), (32, per32)):
            base = Baseline(root / f"baseline-{threads}.jsonl")
            b = run(base.append, threads, per)
            b["fsyncs"] = base.fsyncs / b["appends"]
            base.close()

            log = AuditLog(root / f"audit-{threads}", signer, signer_label=UNSAFE_LABEL)
            f0, n0 = log.fsync_count, log.batch_count
            a = run(log.append, threads, per)
            a["fsyncs"] = (log.fsync_count - f0) / a["appends"]
            a["batch"] = a["appends"] / max(1, log.batch_count - n0)
            log.close()
            rows.append((threads, b, a))

        print(f"audit log bench ({'quick' if args.quick else 'full'}), fsync on {root}")
        head = (
            f"{'threads':>7} {'log':<9} {'appends':>7} {'appends/s':>10} {'p50 ms':>8} "
            f"{'p99 ms':>8} {'fsync/app':>9} {'batch':>6} {'x baseline':>10}"
        )
        print(head)
        print("-" * len(head))
        for threads, b, a in rows:
            for name, r in (("baseline", b), ("audit", a)):
                ratio = r["rate"] / b["rate"]
                print(
                    f"{threads:>7} {name:<9} {r['appends']:>7} {r['rate']:>10.0f} "
                    f"{r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['fsyncs']:>9.3f} "
                    f"{r.get('batch', 1.0):>6.1f} {ratio:>10.2f}"
                )

        # Start-up and audit costs on the log the 1-thread run wrote.
        directory = root / "audit-1"
        t0 = time.perf_counter()
        AuditLog(directory, signer, signer_label=UNSAFE_LABEL).close()
        reopen = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = verify_log(directory, signer.public_key_pem())
        verify = time.perf_counter() - t0
        print(
            f"reopen (verify, last signature): {reopen * 1e3:.1f} ms; "
            f"verify_log (every signature): {verify * 1e3:.1f} ms "
            f"for {report.entries} entries / {report.checkpoints} checkpoints, ok={report.ok}"
        )
        if not report.ok:
            raise SystemExit("the benchmark's own log does not verify")


if __name__ == "__main__":
    main()
