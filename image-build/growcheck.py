#!/usr/bin/env python3
"""Check, on an assembled image, that the data partition grows to the card.

    growcheck.py IMAGE [--grow-mib N]

The image's own ``/usr/lib/appliance/grow-data`` (read out of its root
partition) is run on a copy of the image made N MiB larger, as a bigger SD
card would be: the data partition must then end at the card's end, every
other partition stay as it was, the GPT verify (backup header moved to the
end), and a second run change nothing. Its ext4 file system is then grown
the way ``x-systemd.growfs`` does after the mount (here offline, through a
loop device: ``resize2fs``) and must fill the partition and check clean.
Also checked: the unit that runs it and the /etc/fstab line that pulls it in.
Needs root (loop devices), sfdisk, debugfs, e2fsck, resize2fs, dumpe2fs.
Prints "ok: ..." lines; exits non-zero with the reason on the first failure.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from imagetool import MIB, ImageError, ext4_exists, ext4_read, read_table  # noqa: E402

SCRIPT = "/usr/lib/appliance/grow-data"
UNIT = "/usr/lib/systemd/system/appliance-grow-data.service"


def run(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageError(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout + proc.stderr


def last_lba(image: Path) -> int:
    return int(json.loads(run("sfdisk", "--json", str(image)))["partitiontable"]["lastlba"])


def check(image: Path, grow_mib: int) -> list[str]:
    done = []
    table = read_table(image)
    names = [p.get("name") for p in table]
    if "data" not in names or names[-1] != "data":
        raise ImageError(f"the data partition is not the last one: {names}")
    number = len(table)
    root = next((p for p in table if p.get("name") in ("rootA", "root")), None)
    if root is None:
        raise ImageError(f"no root partition in {names}")
    offset = root["start"] * 512
    for path in (SCRIPT, UNIT):
        if not ext4_exists(image, offset, path):
            raise ImageError(f"the root partition lacks {path}")
    fstab = ext4_read(image, offset, "/etc/fstab")
    line = next((ln for ln in fstab.splitlines() if ln.startswith("PARTLABEL=data")), "")
    for option in ("x-systemd.requires=appliance-grow-data.service", "x-systemd.growfs"):
        if option not in line:
            raise ImageError(f"/etc/fstab's /data line lacks {option}: {line!r}")
    done.append("root: grow-data, its unit, and /data's fstab line requiring it with growfs")

    with tempfile.TemporaryDirectory() as tmp:
        card = Path(tmp) / "card.img"
        run("cp", "--sparse=always", str(image), str(card))
        with card.open("r+b") as f:
            f.truncate(image.stat().st_size + grow_mib * MIB)
        script = Path(tmp) / "grow-data"
        script.write_text(ext4_read(image, offset, SCRIPT))
        before = {p["node"].removeprefix(str(image)): (p["start"], p["size"]) for p in table}
        run("sh", str(script), str(card), str(number))
        after = read_table(card)
        now = {p["node"].removeprefix(str(card)): (p["start"], p["size"]) for p in after}
        data = after[-1]
        end, last = data["start"] + data["size"] - 1, last_lba(card)
        if last - end >= 2048 or data["size"] <= table[-1]["size"]:
            raise ImageError(f"data ends at sector {end}, the card's last usable one is {last}")
        data_node = list(before)[-1]
        if any(now.get(k) != v for k, v in before.items() if k != data_node):
            raise ImageError(f"other partitions moved: {before} -> {now}")
        verify = run("sfdisk", "--verify", str(card))
        if "No errors detected" not in verify:
            raise ImageError(f"the grown table does not verify: {verify.strip()}")
        dump = run("sfdisk", "--dump", str(card))
        run("sh", str(script), str(card), str(number))
        if run("sfdisk", "--dump", str(card)) != dump:
            raise ImageError("a second run changed the table (it must find nothing to do)")
        grew = (data["size"] - table[-1]["size"]) // 2048
        done.append(
            f"on a card {grow_mib} MiB larger: data grew by {grew} MiB to the card's end "
            f"({data['size'] // 2048} MiB), other partitions unchanged, GPT verifies, "
            "a second run changes nothing"
        )
        done.append(_grow_fs(card, data["start"] * 512, data["size"] * 512))
    return done


def _grow_fs(card: Path, offset: int, size: int) -> str:
    loop = run(
        "losetup", "--find", "--show", "--offset", str(offset), "--sizelimit", str(size), str(card)
    ).strip()
    try:
        run("e2fsck", "-fp", loop)
        run("resize2fs", loop)
        head = run("dumpe2fs", "-h", loop)
        blocks = int(re.search(r"Block count:\s+(\d+)", head).group(1))  # type: ignore[union-attr]
        block = int(re.search(r"Block size:\s+(\d+)", head).group(1))  # type: ignore[union-attr]
        run("e2fsck", "-fn", loop)
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)
    if size - blocks * block >= MIB:
        raise ImageError(f"the file system holds {blocks * block} of the partition's {size} bytes")
    return (
        f"its ext4 grows to fill it ({blocks * block // MIB} MiB; resize2fs here, "
        "systemd-growfs on the box) and checks clean"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image", type=Path)
    parser.add_argument("--grow-mib", type=int, default=512)
    args = parser.parse_args()
    if shutil.which("losetup") is None:
        print("growcheck: needs losetup (util-linux)", file=sys.stderr)
        return 1
    try:
        for line in check(args.image, args.grow_mib):
            print(f"ok: {line}")
    except ImageError as e:
        print(f"growcheck: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
