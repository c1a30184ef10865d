"""The LAN firewall (deploy/nftables/appliance.nft): it parses, and with real
packets it admits only the API port and mDNS from the local network.

The packet test makes two throwaway network namespaces joined by a veth pair
("box" with the ruleset, "lan" with the probes), uses only addresses inside
them, and removes them afterwards. Each blocked probe is first shown to
pass with no ruleset loaded, so a refusal is the firewall's doing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.conftest import DEPLOY, need, run

RULESET = DEPLOY / "nftables/appliance.nft"

LISTENER = r"""
import socket, sys, threading
def tcp(port):
    s = socket.socket(socket.AF_INET6); s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("::", port)); s.listen(64)
    while True:
        c, _ = s.accept(); c.sendall(b"ok"); c.close()
def udp(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0); s.bind(("::", port))
    while True:
        data, addr = s.recvfrom(100); s.sendto(b"ok", addr)
for p in (8443, 22, 80, 8080): threading.Thread(target=tcp, args=(p,), daemon=True).start()
for p in (5353, 53, 9999): threading.Thread(target=udp, args=(p,), daemon=True).start()
print("ready", flush=True); sys.stdin.read()
"""

PROBE = r"""
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor
def probe(case):
    proto, src, dst, port = case
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(0.7); s.bind((src, 0))
    try:
        if proto == "tcp":
            s.connect((dst, port)); return s.recv(2) == b"ok"
        s.sendto(b"hi", (dst, port)); return s.recvfrom(10)[0] == b"ok"
    except OSError:
        return False
    finally:
        s.close()
cases = json.loads(sys.argv[1])
with ThreadPoolExecutor(len(cases)) as ex:
    print(json.dumps(list(ex.map(probe, cases))))
"""

BOX4, LAN4, OUTSIDE4 = "192.168.77.1", "192.168.77.2", "198.51.100.7"
BOX6, LAN6, OUTSIDE6 = "fd77::1", "fd77::2", "2001:db8::7"

# (protocol, source, destination, port) -> admitted?
CASES = {
    ("tcp", LAN4, BOX4, 8443): True,
    ("udp", LAN4, BOX4, 5353): True,
    ("tcp", LAN6, BOX6, 8443): True,
    ("udp", LAN6, BOX6, 5353): True,
    ("tcp", LAN4, BOX4, 22): False,
    ("tcp", LAN4, BOX4, 80): False,
    ("tcp", LAN4, BOX4, 8080): False,
    ("udp", LAN4, BOX4, 53): False,
    ("udp", LAN4, BOX4, 9999): False,
    ("tcp", LAN6, BOX6, 22): False,
    ("udp", LAN6, BOX6, 9999): False,
    # The API port and mDNS, but from outside the local network.
    ("tcp", OUTSIDE4, BOX4, 8443): False,
    ("udp", OUTSIDE4, BOX4, 5353): False,
    ("tcp", OUTSIDE6, BOX6, 8443): False,
    ("udp", OUTSIDE6, BOX6, 5353): False,
}


def test_ruleset_parses() -> None:
    need("nft")
    proc = run("nft", "-c", "-f", RULESET)
    assert proc.returncode == 0, proc.stderr


def test_nft_check_sees_a_broken_ruleset(tmp_path: Path) -> None:
    need("nft")
    bad = tmp_path / "bad.nft"
    bad.write_text(RULESET.read_text().replace("policy drop;", "policy dorp;", 1))
    assert run("nft", "-c", "-f", bad).returncode != 0


def ns(name: str, *argv: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = run("ip", "netns", "exec", name, *argv)
    if check:
        assert proc.returncode == 0, f"{argv}: {proc.stderr}"
    return proc


@pytest.fixture
def netns() -> Iterator[tuple[str, str]]:
    need("ip", "nft")
    if os.geteuid() != 0:
        pytest.skip("making network namespaces needs root")
    tag = uuid.uuid4().hex[:6]
    box, lan = f"appl-box-{tag}", f"appl-lan-{tag}"
    made = []
    try:
        for name in (box, lan):
            proc = run("ip", "netns", "add", name)
            if proc.returncode != 0:
                pytest.skip(f"cannot make a network namespace here: {proc.stderr.strip()}")
            made.append(name)
        ns(box, "ip", "link", "add", "vbox", "type", "veth", "peer", "name", "vlan", "netns", lan)
        for name, dev, v4, v6, extra in (
            (box, "vbox", BOX4, BOX6, []),
            (lan, "vlan", LAN4, LAN6, [(OUTSIDE4, 32), (OUTSIDE6, 128)]),
        ):
            ns(name, "ip", "link", "set", "lo", "up")
            ns(name, "ip", "link", "set", dev, "up")
            ns(name, "ip", "addr", "add", f"{v4}/24", "dev", dev)
            ns(name, "ip", "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            for addr, plen in extra:
                ns(name, "ip", "addr", "add", f"{addr}/{plen}", "dev", dev, "nodad")
        # Routes back to the outside sources, so that only the firewall can refuse them.
        ns(box, "ip", "route", "add", f"{OUTSIDE4}/32", "dev", "vbox")
        ns(box, "ip", "-6", "route", "add", f"{OUTSIDE6}/128", "dev", "vbox")
        yield box, lan
    finally:
        for name in made:
            run("ip", "netns", "del", name)


def probe(lan: str, cases: list[tuple]) -> dict[tuple, bool]:
    proc = ns(lan, sys.executable, "-c", PROBE, json.dumps(cases))
    return dict(zip(cases, json.loads(proc.stdout), strict=True))


def test_admits_only_the_api_and_mdns_from_the_lan(netns: tuple[str, str]) -> None:
    box, lan = netns
    listener = subprocess.Popen(
        ["ip", "netns", "exec", box, sys.executable, "-c", LISTENER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        cases = list(CASES)
        # Without the firewall, every probe gets through: the setup is sound.
        before = probe(lan, cases)
        assert all(before.values()), [c for c, ok in before.items() if not ok]
        ns(box, "nft", "-f", RULESET)
        listed = json.loads(ns(box, "nft", "-j", "list", "ruleset").stdout)["nftables"]
        chains = {c["chain"]["name"]: c["chain"] for c in listed if "chain" in c}
        assert chains["input"]["policy"] == "drop" and chains["forward"]["policy"] == "drop"
        after = probe(lan, cases)
        wrong = {c: got for c, got in after.items() if got != CASES[c]}
        assert not wrong, (
            f"admitted when it should not be (True) or refused when it should pass: {wrong}"
        )
        # Loading it again replaces the table instead of failing or doubling it.
        ns(box, "nft", "-f", RULESET)
        tables = [t["table"]["name"] for t in json.loads(
            ns(box, "nft", "-j", "list", "tables").stdout)["nftables"] if "table" in t]  # fmt: skip
        assert tables == ["appliance"]
    finally:
        listener.kill()
        listener.wait()
