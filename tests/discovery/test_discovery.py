"""Discovery between two network namespaces (made the way the firewall test
makes them): the box announces itself by mDNS, `appliance discover` on the
"LAN" side finds it, and `appliance pair` pairs without an address. An
impostor that copies the box's announcement (its fingerprint) but answers
with another certificate is refused: discover says so, and pair never
trusts it, even when it is the only box that answers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.discovery import Found, parse
from tests.deploy.test_firewall import BOX4, netns, ns  # noqa: F401 - netns is a fixture

IMPOSTOR4 = "192.168.77.3"

IMPOSTOR = r"""
import socket, ssl, sys, tempfile, threading
from pathlib import Path
from zeroconf import ServiceInfo, Zeroconf
from appliance.api.tls import ensure_certificate
addr, fp = sys.argv[1], sys.argv[2]
cert, key, _ = ensure_certificate(Path(tempfile.mkdtemp()), [addr])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(cert, key)
srv = socket.create_server((addr, 8443))
def serve():
    while True:
        conn, _ = srv.accept()
        try:
            ctx.wrap_socket(conn, server_side=True).close()
        except OSError:
            conn.close()
threading.Thread(target=serve, daemon=True).start()
zc = Zeroconf(interfaces=[addr])
zc.register_service(ServiceInfo(
    "_appliance._tcp.local.", "appliance on impostor._appliance._tcp.local.", port=8443,
    properties={"fp": fp, "api": "1", "name": "impostor"}, server="impostor.local.",
    parsed_addresses=[addr]))
print("ready", flush=True); sys.stdin.read()
"""


def cli(where: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return ns(where, sys.executable, "-m", "appliance.cli", *args, check=False)


class Running:
    """A process started in a namespace, stopped by its own pid."""

    def __init__(self, argv: list[str], log: Path | None = None) -> None:
        out = log.open("ab") if log else subprocess.PIPE
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=out)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def lan(netns: tuple[str, str], tmp_path: Path) -> Iterator[tuple[str, str, Path]]:  # noqa: F811
    box, desk = netns
    ns(box, "ip", "addr", "add", f"{IMPOSTOR4}/24", "dev", "vbox")
    yield box, desk, tmp_path


def start_box(where: str, root: Path, *extra: str) -> tuple[Running, str]:
    log = root / "box.log"
    log.write_text("")
    (root / "share").mkdir(exist_ok=True)
    box = Running(
        ["ip", "netns", "exec", where, sys.executable, "-m", "appliance.cli", "up", "--dev",
         "--keystore", "dev", "--host", BOX4, "--no-agent", "--state-dir", str(root / "state"),
         "--share", f"docs={root / 'share'}", *extra],
        log,
    )  # fmt: skip
    wanted = "appliance listening" if "--no-advertise" in extra else "announced by mDNS"
    deadline = time.monotonic() + 60
    while wanted not in log.read_text():
        assert box.proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    found = re.search(r"pin this on desktops\): ([0-9A-F:]+)", log.read_text())
    assert found, log.read_text()
    return box, found.group(1)


def press_when_shown(state: Path) -> threading.Thread:
    def press() -> None:
        base = [sys.executable, "-m", "appliance.cli", "panel"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            shown = subprocess.run([*base, "show", "--json", "--state-dir", str(state)],
                                   capture_output=True, text=True)  # fmt: skip
            if shown.returncode == 0 and json.loads(shown.stdout)["pending"]:
                time.sleep(1.1)  # the arming delay
                subprocess.run([*base, "approve", "--state-dir", str(state)], check=True)
                return
            time.sleep(0.2)

    thread = threading.Thread(target=press, daemon=True)
    thread.start()
    return thread


def test_found_paired_and_an_impostor_refused(lan: tuple[str, str, Path]) -> None:
    box_ns, desk_ns, root = lan
    creds = root / "client.json"
    box, fp = start_box(box_ns, root, "--no-advertise")
    impostor = Running(["ip", "netns", "exec", box_ns, sys.executable, "-c", IMPOSTOR,
                        IMPOSTOR4, fp])  # fmt: skip
    try:
        assert impostor.proc.stdout is not None
        assert impostor.proc.stdout.readline().strip() == b"ready"

        # Only the impostor answers (with the box's fingerprint): nothing is trusted.
        out = cli(desk_ns, "pair", "--name", "desk", "--credentials", str(creds), "--json")
        assert out.returncode == 3, out.stdout + out.stderr
        assert "does not match" in out.stderr and "no box could be trusted" in out.stderr
        assert not creds.exists()
        out = cli(desk_ns, "discover", "--json")
        (only,) = json.loads(out.stdout)
        assert out.returncode == 1 and only["status"] == "refused" and only["name"] == "impostor"
        assert "does not match" in only["problem"] and only["refused_at"]

        # The real box announces itself: found, checked, and the impostor still refused.
        box.stop()
        box, again = start_box(box_ns, root)
        assert again == fp
        out = cli(desk_ns, "discover", "--json")
        assert out.returncode == 0, out.stderr
        found = {f["name"]: f for f in json.loads(out.stdout)}
        real = next(f for n, f in found.items() if n != "impostor")
        assert real["status"] == "ok" and real["url"] == f"https://{BOX4}:8443"
        assert real["fingerprint"] == fp and real["api_versions"] == [1] and real["device_key_id"]
        assert found["impostor"]["status"] == "refused"
        human = cli(desk_ns, "discover")
        assert "refused impostor: the certificate" in human.stdout and BOX4 in human.stdout

        # Pairing without an address: the checked box, its certificate pinned.
        pressing = press_when_shown(root / "state")
        out = cli(desk_ns, "pair", "--name", "desk", "--credentials", str(creds), "--json")
        pressing.join(timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "refused" in out.stderr  # it said what it refused on the way
        saved = json.loads(creds.read_text())
        assert saved["url"] == f"https://{BOX4}:8443" and saved["fingerprint"] == fp
        assert saved["certificate_pem"].startswith("-----BEGIN CERTIFICATE")
        assert saved["device_key_id"] == real["device_key_id"]
        out = cli(desk_ns, "verify", "--credentials", str(creds))
        assert out.returncode == 0 and "ok: the boot statement" in out.stdout, out.stderr
    finally:
        impostor.stop()
        box.stop()


def info(**props: bytes) -> object:
    from zeroconf import ServiceInfo

    return ServiceInfo(
        "_appliance._tcp.local.",
        "x._appliance._tcp.local.",
        port=8443,
        properties=props,
        server="x.local.",
        parsed_addresses=["192.168.1.9", "fd00::9"],
    )


def test_announcements_are_read_as_claims() -> None:
    good = parse(info(fp=b"AA:BB", api=b"1,2", name=b"box", dk=b"k1"))  # type: ignore[arg-type]
    assert isinstance(good, Found) and good.api_versions == (1, 2) and good.name == "box"
    assert good.urls() == ["https://192.168.1.9:8443", "https://[fd00::9]:8443"]
    odd = parse(info(fp=b"\xff\xfe", api=b"one", name=b"a\x1bb"))  # type: ignore[arg-type]
    assert odd is not None and odd.fingerprint is None and odd.api_versions == ()
    assert odd.name == "x"  # a name that is not printable text is not shown
    long = parse(info(fp=b"A" * 240))  # type: ignore[arg-type]
    assert long is not None and long.fingerprint is None
