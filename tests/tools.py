"""What the suite needs from the machine. `make test` installs every
development tool first, so a missing one is a broken setup: the test fails
and says what to install, it never silently skips."""

from __future__ import annotations

import importlib.util
import shutil

import pytest


def require(*tools: str, package: str = "") -> None:
    """Fail unless every program in ``tools`` is on PATH."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        how = f" (Debian package {package})" if package else ""
        pytest.fail(f"needs {', '.join(missing)}{how}: `make test` installs it", pytrace=False)


def require_module(name: str, how: str = "`make setup` installs it") -> None:
    """Fail unless the Python module ``name`` can be imported."""
    if importlib.util.find_spec(name) is None:
        pytest.fail(f"needs the Python module {name}: {how}", pytrace=False)
