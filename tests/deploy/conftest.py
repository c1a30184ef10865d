"""Fixtures for the deploy files and the image recipe: the real tools
(systemd-analyze, nft, rauc, sfdisk, mtools, mkfs, openssl) on real files."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.tools import require

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
IMAGE_BUILD = REPO / "image-build"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))


def need(*tools: str) -> None:
    """The deploy tools `make apt` installs; missing ones fail the test."""
    require(*tools)


def run(*argv: str | Path, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kw)


def make_ca(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """A test CA and a release certificate it signs: (ca.pem, release.pem, release.key).
    Made fresh per test run; no release key is ever kept in the repository."""
    directory.mkdir(parents=True, exist_ok=True)
    ext = directory / "ext.cnf"
    ext.write_text(
        "[ca]\nbasicConstraints=critical,CA:true\nkeyUsage=critical,keyCertSign,cRLSign\n"
        "subjectKeyIdentifier=hash\n"
        "[rel]\nbasicConstraints=critical,CA:false\nkeyUsage=critical,digitalSignature\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    ca_key, ca, key, csr, cert = (
        directory / n for n in ("ca.key", "ca.pem", "rel.key", "rel.csr", "rel.pem")
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for argv in (
        ["openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "30",
         "-subj", f"/CN={name} CA", "-addext", "basicConstraints=critical,CA:true",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["openssl", "req", *ec, "-keyout", key, "-out", csr, "-subj", f"/CN={name} release"],
        ["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "30", "-extfile", ext, "-extensions", "rel"],
    ):  # fmt: skip
        proc = run(*argv)
        assert proc.returncode == 0, proc.stderr
    return ca, cert, key


def stage_minimal_root(root: Path, keyring: Path) -> None:
    """A small root file system with everything the appliance adds to the OS:
    the deploy files (by the same script the image recipe uses), the units
    enabled, the RAUC keyring, and a stand-in /usr/bin/appliance (the real
    program is installed and run in `make image-check`)."""
    proc = run("sh", IMAGE_BUILD / "install-deploy.sh", root)
    assert proc.returncode == 0, proc.stderr
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    (root / "usr/bin/appliance").write_text("#!/bin/sh\necho appliance 0.1.0\n")
    (root / "usr/bin/appliance").chmod(0o755)
    shutil.copy(keyring, root / "etc/rauc/keyring.pem")
    # The host's own units, so the appliance's [Install] targets resolve.
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", dirs_exist_ok=True,
                    symlinks=True)  # fmt: skip
    proc = run(
        "systemctl", f"--root={root}", "enable",
        "appliance-broker.service", "appliance-agent.service", "appliance-pairing-hint.service",
        "appliance-mark-good.service",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
