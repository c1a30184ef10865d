#!/usr/bin/env python3
"""The one HailoRT version of the image (``hailo.toml``), and the HEF it installs.

    hailo.py packages                  the Hailo packages, one line (to hold)
    hailo.py apt-preferences           an apt pin keeping them at the version
    hailo.py fetch ROOT [--cache DIR]  download the agent's HEF, check it, install it

``fetch`` installs the HEF of the model the agent runs (``AGENT_MODEL`` in
ROOT's /etc/appliance/agent.env) at the path its manifest names, after
checking that the manifest's sha256 is the one Hailo published for the pinned
version and that the downloaded file has it. The file is root's, read-only.
Used by the Pi image recipe (build-pi-image.sh) and by tests.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tomllib
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PIN_FILE = HERE / "hailo.toml"
MODELS = "/usr/share/appliance/models"
AGENT_ENV = "/etc/appliance/agent.env"


class HailoError(Exception):
    """The Hailo part of the image is not as pinned; the message says what."""


@dataclass(frozen=True)
class Pin:
    hailort: str
    packages: tuple[str, ...]
    hef_url: str
    hefs: dict[str, str]  # HEF file name -> sha256


def load_pin(path: Path = PIN_FILE) -> Pin:
    data = tomllib.loads(path.read_text())
    hefs = dict(data["hefs"])
    for name, digest in hefs.items():
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise HailoError(f"{path}: the sha256 of {name} is not 64 hex digits")
    return Pin(data["hailort"], tuple(data["packages"]), data["hef_url"], hefs)


def apt_preferences(pin: Pin) -> str:
    return (
        f"# The Hailo packages at HailoRT {pin.hailort} (image-build/hailo.toml): the HEFs\n"
        "# on this image are compiled for that version.\n"
        f"Package: {' '.join(pin.packages)}\n"
        f"Pin: version {pin.hailort}*\n"
        "Pin-Priority: 1001\n"
    )


def env_value(path: Path, key: str) -> str | None:
    """``KEY=value`` from a systemd EnvironmentFile (no quoting used here)."""
    for line in path.read_text().splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and name == key:
            return value.strip()
    return None


def agent_manifest(root: Path) -> Path:
    """The manifest of the model the agent runs, inside ROOT."""
    env = root / AGENT_ENV.lstrip("/")
    model = env_value(env, "AGENT_MODEL") if env.is_file() else None
    if not model:
        raise HailoError(f"{AGENT_ENV} names no AGENT_MODEL: the agent has no model to run")
    return root / model.lstrip("/")


def declared_hef(root: Path, pin: Pin) -> tuple[Path, str]:
    """(path inside ROOT, sha256) of the agent's HEF, checked against the pin."""
    manifest_path = agent_manifest(root)
    try:
        manifest = tomllib.loads(manifest_path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise HailoError(f"the agent's manifest {manifest_path} is unreadable: {e}") from None
    if manifest.get("backend") != "hailo":
        raise HailoError(f"the agent's model {manifest_path.name} is not a Hailo-10H HEF")
    file, sha = str(manifest.get("file", "")), str(manifest.get("sha256", ""))
    name = Path(file).name
    if not file.startswith("/"):
        raise HailoError(f"{manifest_path.name}: file {file!r} is not an absolute path")
    if name not in pin.hefs:
        raise HailoError(
            f"{manifest_path.name}: no HEF named {name} in Model Zoo GenAI for HailoRT "
            f"{pin.hailort} (hailo.toml)"
        )
    if sha != pin.hefs[name]:
        raise HailoError(
            f"{manifest_path.name}: sha256 {sha or '(none)'} is not the HailoRT {pin.hailort} "
            f"HEF's {pin.hefs[name]}"
        )
    return root / file.lstrip("/"), sha


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def fetch(root: Path, cache: Path, pin: Pin, url_template: str | None = None) -> Path:
    """Download (or reuse from ``cache``) the agent's HEF, check its sha256,
    install it read-only at its manifest's path in ROOT. Returns that path."""
    target, sha = declared_hef(root, pin)
    cache.mkdir(parents=True, exist_ok=True)
    cached = cache / f"{sha}.hef"
    if not cached.exists() or sha256_file(cached) != sha:
        url = (url_template or pin.hef_url).format(file=target.name)
        part = cache / f"{sha}.part"
        print(f"hailo.py: downloading {url}", file=sys.stderr)
        with urllib.request.urlopen(url, timeout=60) as r, part.open("wb") as f:  # noqa: S310
            shutil.copyfileobj(r, f, 1 << 20)
        got = sha256_file(part)
        if got != sha:
            part.unlink()
            raise HailoError(f"{url} has sha256 {got}, not the pinned {sha}: not installed")
        part.replace(cached)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    shutil.copyfile(cached, tmp)
    os.chmod(tmp, 0o444)
    if os.geteuid() == 0:
        os.chown(tmp, 0, 0)
    tmp.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("packages")
    sub.add_parser("apt-preferences")
    f = sub.add_parser("fetch")
    f.add_argument("root", type=Path)
    f.add_argument("--cache", type=Path, default=Path("build/hef-cache"))
    f.add_argument("--url", help="a URL template with {file} (default: hailo.toml's hef_url)")
    args = p.parse_args(argv)
    pin = load_pin()
    try:
        if args.cmd == "packages":
            print(" ".join(pin.packages))
        elif args.cmd == "apt-preferences":
            print(apt_preferences(pin), end="")
        else:
            path = fetch(args.root, args.cache, pin, args.url)
            print(f"installed {path.relative_to(args.root)} (sha256 {sha256_file(path)})")
    except HailoError as e:
        print(f"hailo.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
