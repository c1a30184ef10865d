#!/usr/bin/env python3
"""Assemble the SD image from staged folders, and check an image file.

No loop devices and no mounts: the partition table is written by ``sfdisk``
into a plain file, FAT partitions are made with ``mkfs.vfat`` and filled with
``mcopy`` (mtools), ext4 partitions with ``mkfs.ext4 -d``, each made in
place at its offset in the file (``mkfs.vfat --offset``, ``mkfs.ext4 -E
offset=``). The check reads the table back (``sfdisk --json``),
lists the FAT partitions with ``mdir``/``mtype`` and reads the ext4 root with
``debugfs`` at the partition's offset.

    imagetool.py assemble --layout layout.json --stage autoboot=DIR --stage boot=DIR \
        --stage root=DIR OUT.img
    imagetool.py check --layout layout.json [--boot-file NAME ...] OUT.img

The layout (``layout.json``) names the partitions, their file systems, sizes
and which staged folder fills each. Used by the Pi image recipe, by
``make image-check`` and by the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

MIB = 1 << 20
# GPT partition types: FAT ("Microsoft basic data", what the Pi firmware
# reads) and Linux file system.
TYPE_FAT = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
TYPE_LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
FIRST_MIB = 4  # the first partition starts here (room for the GPT, aligned)


class ImageError(Exception):
    """The image is not as the layout says; the message says what and where."""


def _run(*argv: str, stdin: str | None = None) -> str:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageError(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _dir_mib(path: Path) -> int:
    total = 0
    for root, dirs, files in os.walk(path):
        for name in files + dirs:
            p = Path(root) / name
            total += max(p.lstat().st_size, 4096) if not p.is_symlink() else 4096
    return total // MIB + 1


def load_layout(path: Path) -> list[dict]:
    parts = json.loads(path.read_text())["partitions"]
    for p in parts:
        if p["fs"] not in ("fat", "ext4", "none"):
            raise ImageError(f"layout {path}: partition {p['name']}: unknown fs {p['fs']!r}")
    return parts


def _sizes(parts: list[dict], stages: dict[str, Path]) -> list[int]:
    """Each partition's size in MiB: as given, or 'auto' (the staged folder
    with 30% and 64 MiB to spare, for an ext4 root), or 'same:NAME'."""
    sizes: dict[str, int] = {}
    for p in parts:
        size = p["size_mib"]
        if size == "auto":
            stage = stages.get(p.get("from", ""))
            if stage is None:
                raise ImageError(f"partition {p['name']}: size 'auto' needs its staged folder")
            size = int(_dir_mib(stage) * 1.3) + 64
        elif isinstance(size, str) and size.startswith("same:"):
            size = sizes[size[5:]]
        sizes[p["name"]] = int(size)
    return [sizes[p["name"]] for p in parts]


def _make_fat(image: Path, start_mib: int, mib: int, label: str, stage: Path | None) -> None:
    """A FAT file system made in place at ``start_mib`` of the image file."""
    # FAT32 from 64 MiB, with one-sector clusters: mkfs.fat's default cluster
    # for a 256 MiB partition leaves fewer clusters than FAT32 allows.
    fat = ["-F", "32", "-s", "1"] if mib >= 64 else ["-F", "16"]
    _run("mkfs.vfat", *fat, "-n", label[:11].upper(),
         f"--offset={start_mib * MIB // 512}", str(image), str(mib * 1024))  # fmt: skip
    if stage is not None and any(stage.iterdir()):
        entries = [str(p) for p in sorted(stage.iterdir())]
        _run("mcopy", "-s", "-p", "-i", f"{image}@@{start_mib * MIB}", *entries, "::/")


def _make_ext4(image: Path, start_mib: int, mib: int, label: str, stage: Path | None) -> None:
    """An ext4 file system made in place (``mkfs.ext4 -E offset``), filled from ``stage``."""
    argv = ["mkfs.ext4", "-q", "-F", "-L", label,
            "-E", f"offset={start_mib * MIB},root_owner=0:0"]  # fmt: skip
    if stage is not None:
        argv += ["-d", str(stage)]
    _run(*argv, str(image), f"{mib}M")


def assemble(layout: Path, stages: dict[str, Path], out: Path) -> None:
    parts = load_layout(layout)
    sizes = _sizes(parts, stages)
    total = FIRST_MIB + sum(sizes) + 1  # 1 MiB for the backup GPT
    out.unlink(missing_ok=True)
    with out.open("wb") as f:
        f.truncate(total * MIB)
    script = ["label: gpt", "unit: sectors", f"first-lba: {FIRST_MIB * MIB // 512}"]
    start = FIRST_MIB
    for p, size in zip(parts, sizes, strict=True):
        kind = TYPE_FAT if p["fs"] == "fat" else TYPE_LINUX
        script.append(
            f"start={start * MIB // 512}, size={size * MIB // 512}, type={kind}, name={p['name']}"
        )
        start += size
    _run("sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(out), stdin="\n".join(script))
    start = FIRST_MIB
    for p, size in zip(parts, sizes, strict=True):
        stage = stages.get(p.get("from", "")) if p.get("from") else None
        if p.get("from") and stage is None:
            raise ImageError(f"partition {p['name']}: no staged folder {p['from']!r} given")
        if p["fs"] == "fat":
            _make_fat(out, start, size, p["name"], stage)
        elif p["fs"] == "ext4":
            _make_ext4(out, start, size, p["name"], stage)
        start += size


# ---------------------------------------------------------------------- check
def read_table(image: Path) -> list[dict]:
    table = json.loads(_run("sfdisk", "--json", str(image)))["partitiontable"]
    if table.get("label") != "gpt":
        raise ImageError(f"{image}: partition table is {table.get('label')!r}, not GPT")
    return table["partitions"]


def fat_files(image: Path, offset: int) -> set[str]:
    out = _run("mdir", "-b", "-i", f"{image}@@{offset}", "::/")
    return {line.removeprefix("::/").rstrip("/") for line in out.split() if line.startswith("::/")}


def fat_read(image: Path, offset: int, name: str) -> str:
    return _run("mtype", "-i", f"{image}@@{offset}", f"::/{name}")


def ext4_read(image: Path, offset: int, path: str) -> str:
    """A file's text from the ext4 file system at ``offset`` ('' if absent)."""
    proc = subprocess.run(
        ["debugfs", "-R", f"cat {path}", f"{image}?offset={offset}"],
        capture_output=True,
        text=True,
    )
    return proc.stdout


def ext4_exists(image: Path, offset: int, path: str) -> bool:
    proc = subprocess.run(
        ["debugfs", "-R", f"stat {path}", f"{image}?offset={offset}"],
        capture_output=True,
        text=True,
    )
    return proc.returncode == 0 and "Inode:" in proc.stdout


# What the root of every image must hold: the appliance, its units enabled
# (the mark-good unit too), the watchdog drop-in, its configuration, the
# pinned HailoRT version, the firewall, RAUC's configuration and keyring.
ROOT_FILES = [
    "/usr/bin/appliance",
    "/usr/lib/systemd/system/appliance-broker.service",
    "/usr/lib/systemd/system/appliance-agent.service",
    "/usr/lib/systemd/system/appliance-pairing-hint.service",
    "/etc/systemd/system/multi-user.target.wants/appliance-broker.service",
    "/etc/systemd/system/multi-user.target.wants/appliance-agent.service",
    "/etc/systemd/system/multi-user.target.wants/appliance-pairing-hint.service",
    "/usr/lib/systemd/system/appliance-mark-good.service",
    "/etc/systemd/system/multi-user.target.wants/appliance-mark-good.service",
    "/usr/lib/systemd/system.conf.d/appliance-watchdog.conf",
    "/usr/share/appliance/hailo.toml",
    "/usr/lib/sysusers.d/appliance.conf",
    "/usr/lib/tmpfiles.d/appliance.conf",
    "/etc/appliance/appliance.toml",
    "/etc/appliance/agent.env",
    "/etc/nftables.conf",
    "/etc/rauc/system.conf",
    "/etc/rauc/keyring.pem",
    "/etc/fstab",
    "/data",
]


def check(layout: Path, image: Path, boot_files: list[str]) -> list[str]:
    """Check ``image`` against the layout; returns what was checked, raises
    :class:`ImageError` with the first thing that is wrong."""
    parts = load_layout(layout)
    table = read_table(image)
    done = []
    if len(table) != len(parts):
        raise ImageError(f"{image}: {len(table)} partitions, the layout has {len(parts)}")
    size = image.stat().st_size
    offsets: dict[str, int] = {}
    end = 0
    for want, got in zip(parts, table, strict=True):
        name = got.get("name")
        if name != want["name"]:
            raise ImageError(f"partition {got['node']}: named {name!r}, not {want['name']!r}")
        kind = TYPE_FAT if want["fs"] == "fat" else TYPE_LINUX
        if got["type"].upper() != kind:
            raise ImageError(f"partition {name}: type {got['type']}, not {kind}")
        start, sectors = got["start"] * 512, got["size"] * 512
        if start % MIB:
            raise ImageError(f"partition {name}: starts at {start}, not on a MiB boundary")
        if start < end:
            raise ImageError(f"partition {name}: overlaps the one before it")
        end = start + sectors
        if end > size:
            raise ImageError(f"partition {name}: ends past the image file")
        offsets[name] = start
    done.append(f"GPT with {len(parts)} partitions: " + ", ".join(p["name"] for p in parts))

    by_from = {p.get("from"): p["name"] for p in parts if p.get("from")}
    if "autoboot" in by_from:
        auto = fat_read(image, offsets[by_from["autoboot"]], "autoboot.txt")
        all_part = re.search(r"\[all\][^\[]*boot_partition=(\d+)", auto)
        try_part = re.search(r"\[tryboot\][^\[]*boot_partition=(\d+)", auto)
        if not (all_part and try_part and "tryboot_a_b=1" in auto):
            raise ImageError(
                "autoboot.txt does not name a boot partition under [all] and [tryboot]"
            )
        boot_name = parts[int(all_part.group(1)) - 1]["name"]
        done.append(
            f"autoboot.txt: boots partition {all_part.group(1)} ({boot_name}), "
            f"tryboot partition {try_part.group(1)}"
        )
    else:
        boot_name = by_from["boot"]
    boot = offsets[boot_name]
    present = fat_files(image, boot)
    missing = [f for f in ["config.txt", "cmdline.txt", *boot_files] if f not in present]
    if missing:
        raise ImageError(f"boot partition {boot_name}: missing {', '.join(missing)}")
    cmdline = fat_read(image, boot, "cmdline.txt")
    root_name = by_from["root"]
    if f"root=PARTLABEL={root_name}" not in cmdline:
        raise ImageError(f"cmdline.txt does not mount root=PARTLABEL={root_name}: {cmdline!r}")
    config = fat_read(image, boot, "config.txt")
    if "dtoverlay=tpm-slb9670" not in config:
        raise ImageError("config.txt lacks the TPM overlay (overlays/tpm-slb9670.txt)")
    done.append(
        f"boot partition {boot_name}: " + ", ".join(sorted(present & {"config.txt", "cmdline.txt",
                                                                     *boot_files}))
        + f"; cmdline root=PARTLABEL={root_name}; config.txt has the TPM overlay"
    )  # fmt: skip

    root = offsets[root_name]
    absent = [f for f in ROOT_FILES if not ext4_exists(image, root, f)]
    if absent:
        raise ImageError(f"root partition {root_name}: missing {', '.join(absent)}")
    fstab = ext4_read(image, root, "/etc/fstab")
    if "PARTLABEL=data" not in fstab:
        raise ImageError("the root's /etc/fstab does not mount the data partition")
    done.append(f"root partition {root_name}: {len(ROOT_FILES)} required files, fstab mounts data")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("assemble")
    a.add_argument("--layout", type=Path, required=True)
    a.add_argument("--stage", action="append", default=[], metavar="NAME=DIR")
    a.add_argument("out", type=Path)
    c = sub.add_parser("check")
    c.add_argument("--layout", type=Path, required=True)
    c.add_argument("--boot-file", action="append", default=[])
    c.add_argument("image", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "assemble":
            stages = {}
            for s in args.stage:
                name, _, path = s.partition("=")
                stages[name] = Path(path)
            assemble(args.layout, stages, args.out)
            print(f"assembled {args.out} ({args.out.stat().st_size // MIB} MiB)")
        else:
            for line in check(args.layout, args.image, args.boot_file):
                print(f"ok: {line}")
    except ImageError as e:
        print(f"imagetool: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
