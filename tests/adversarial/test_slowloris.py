"""Slowloris against the real box: an unpaired device holds 1,100 half-open
connections (a request head that never ends, one header line a second,
every connection the box drops opened again), while a paired desktop at
another address goes on working. The box runs as ``appliance up`` with the
file-descriptor limit systemd gives a unit that sets none (1024), as the
issue found it; without the connection gate the flood takes every
descriptor and the desktop's requests are never accepted."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from appliance.api.connections import ConnectionLimits
from tests.e2e.conftest import Box

# More than the 1,024 descriptors the box has without LimitNOFILE (the issue
# saw paired desktops time out at 1,088).
HALF_OPEN = 1_100
REQUESTS = 200
# The promise: a paired desktop is answered within a second (p99). A request
# takes a few milliseconds on an idle machine; the bound leaves room for a
# loaded two-core machine without letting a starved box pass.
P99_BOUND_S = 1.0

ATTACKER = r"""
import socket, sys, time
host, port, n, source = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
HEAD = b"GET /healthz HTTP/1.1\r\nHost: box\r\nUser-Agent: slow\r\n"

def opened():
    s = socket.socket()
    s.bind((source, 0))
    s.settimeout(2)
    s.connect((host, port))
    s.sendall(HEAD)
    s.setblocking(False)
    return s

held = [opened() for _ in range(n)]
print("ready", flush=True)
reopened = 0
while True:
    time.sleep(1)
    for i, s in enumerate(held):
        try:
            s.send(b"X-Slow: %d\r\n" % i)
        except OSError:
            s.close()
            try:
                held[i] = opened()
                reopened += 1
            except OSError:
                pass
    print("reopened", reopened, flush=True)
"""


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    b = Box(tmp_path)
    b.extra += ["--keystore", "dev"]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # the box inherits it
    try:
        b.start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        yield b
    finally:
        b.stop()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_slowloris_flood_does_not_keep_a_paired_desktop_waiting(box: Box) -> None:
    desktop = box.pair("laptop")
    credential = desktop.headers["Authorization"]
    desktop.close()
    assert box.proc is not None
    before = open_fds(box.proc.pid)

    attacker = subprocess.Popen(
        [sys.executable, "-c", ATTACKER, "127.0.0.1", str(box.port), str(HALF_OPEN), "127.0.0.1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert attacker.stdout is not None
        assert attacker.stdout.readline().strip() == "ready"
        time.sleep(2.5)  # two rounds of trickling and reopening
        # A new connection for every request, from 127.0.0.2: each must be
        # accepted and admitted while the flood goes on.
        latencies = []
        with httpx.Client(
            base_url=box.url,
            headers={"Authorization": credential},
            timeout=5,
            limits=httpx.Limits(max_keepalive_connections=0),
            transport=httpx.HTTPTransport(local_address="127.0.0.2"),
        ) as client:
            for _ in range(REQUESTS):
                start = time.monotonic()
                try:
                    r = client.get("/v1/approvals")
                    assert r.status_code == 200, r.text
                    latencies.append(time.monotonic() - start)
                except httpx.TimeoutException:
                    latencies.append(float("inf"))
                    if latencies.count(float("inf")) >= 5:
                        break  # starved: no need to wait out the rest
                time.sleep(0.03)  # a desktop's pace, under its rate limit
        during = open_fds(box.proc.pid)
        assert attacker.poll() is None, "the attacker stopped early"
    finally:
        attacker.kill()
        attacker.wait()
    latencies += [float("inf")] * (REQUESTS - len(latencies))
    latencies.sort()
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(
        f"\nslowloris: {HALF_OPEN} half-open connections held from 127.0.0.1; "
        f"{REQUESTS} requests from 127.0.0.2: p50 {p50 * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms; "
        f"box descriptors {before} before, {during} during"
    )
    assert p99 < P99_BOUND_S, f"p99 {p99:.3f} s"
    # The box holds at most its per-address share of the flood.
    assert during - before <= ConnectionLimits().per_peer + 8
