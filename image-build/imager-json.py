#!/usr/bin/env python3
"""The Raspberry Pi Imager entry for an image (the ``os_list`` JSON format).

    imager-json.py IMAGE.img IMAGE.img.xz [--url URL] > os_list_imagingutility.json

No ``init_format``: Imager then offers no OS customisation (it would turn on
SSH or set a password, which the appliance does not want). ``devices``
limits it to the Raspberry Pi 5.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
from pathlib import Path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def entry(image: Path, xz: Path, url: str) -> dict:
    return {
        "name": "Safe agent appliance",
        "description": "Raspberry Pi 5 + AI HAT+ 2: a LAN broker for local AI agents, with a "
        "TPM, a physical approval button and signed A/B updates.",
        "url": url,
        "release_date": datetime.date.today().isoformat(),
        "extract_size": image.stat().st_size,
        "extract_sha256": sha256(image),
        "image_download_size": xz.stat().st_size,
        "image_download_sha256": sha256(xz),
        "devices": ["pi5-64bit"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("image", type=Path)
    p.add_argument("xz", type=Path)
    p.add_argument("--url", help="where the .img.xz is published (default: its file name)")
    args = p.parse_args()
    url = args.url or args.xz.name
    print(json.dumps({"os_list": [entry(args.image, args.xz, url)]}, indent=2))


if __name__ == "__main__":
    main()
