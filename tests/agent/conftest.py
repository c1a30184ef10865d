"""Shared fixtures: the real default model (Qwen2.5-Coder-1.5B-Instruct on
llama.cpp), loaded once per test session (its hash is checked and it loads in
a few seconds; each plan costs seconds: keep calls few)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from appliance.agent.backends import LlamaCppBackend
from appliance.agent.models import Manifest, default_manifest_path, load_manifest
from appliance.agent.planner import Planner

LISTING = {
    "docs": [
        "Inbox/",
        "Inbox/2021-invoice.pdf",
        "Inbox/2022-receipt.pdf",
        "Inbox/2023-letter.pdf",
        "notes.txt",
    ]
}


@pytest.fixture(scope="session")
def manifest() -> Manifest:
    return load_manifest(default_manifest_path())


@pytest.fixture(scope="session")
def backend(manifest: Manifest) -> Iterator[LlamaCppBackend]:
    b = LlamaCppBackend(manifest)
    yield b
    b.close()


@pytest.fixture(scope="session")
def planner(backend: LlamaCppBackend) -> Planner:
    planner = Planner(backend)
    # As the agent does at start: the fixed prompts evaluated once, here, so
    # that no test's deadline pays for it (minutes on a loaded machine).
    planner.warm()
    return planner
