"""schemathesis over the OpenAPI document the real box serves, with a
paired desktop's credential: every operation, with data that fits its schema
and data that does not, unknown methods, missing and wrong credentials, and
sequences that follow one answer's ids into the next request. It must find
no server error (5xx), no status the document does not declare, no body or
content type that breaks it, nothing the schema forbids accepted, and
nothing it allows refused as malformed.

A short run is part of ``make test``; ``make fuzz`` runs it for five minutes
(``APPLIANCE_FUZZ_SECONDS``)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Box

# Every check but two: the box does not serve deletions (use_after_free and
# ensure_resource_availability follow a DELETE).
EXCLUDED = ("use_after_free", "ensure_resource_availability")


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    config = tmp_path / "box.toml"
    # The fuzzer is one desktop sending as fast as it can: lift the rate
    # limit, or most answers would be 429 and little would be tried.
    config.write_text("[limits]\nrequests_per_second = 1000000.0\nburst = 1000000\n")
    b = Box(tmp_path)
    b.extra += ["--config", str(config)]
    share = b.share
    (share / "Inbox").mkdir()
    (share / "Inbox" / "a.pdf").write_bytes(b"%PDF a")
    (share / "notes.txt").write_text("hello")
    b.start()
    try:
        yield b
    finally:
        b.stop()


def test_the_served_openapi_holds(box: Box, tmp_path: Path) -> None:
    credential = box.pair("fuzzer").headers["Authorization"]
    seconds = os.environ.get("APPLIANCE_FUZZ_SECONDS")
    # make test: a short pass with a fixed seed (the same cases each run);
    # make fuzz: a fresh seed, for as long as it is given.
    budget = ["--max-time", seconds] if seconds else ["--max-examples", "12", "--seed", "14"]
    report = tmp_path / "report"
    cmd = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{box.url}/openapi.json",
        "--header",
        f"Authorization: {credential}",
        "--checks",
        "all",
        "--exclude-checks",
        ",".join(EXCLUDED),
        "--workers",
        "1",
        "--request-timeout",
        "70",  # a long poll may wait 60 s
        "--report",
        "junit",
        "--report-dir",
        str(report),
        "--no-color",
        *budget,
    ]
    # In tmp_path: schemathesis keeps a cache in its working directory.
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=tmp_path)
    print("\n" + done.stdout[done.stdout.find("Coverage") :])
    log = box.log.read_text()
    assert "Traceback" not in log, log[-5000:]
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-5000:]
