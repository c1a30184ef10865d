"""The image check installs the appliance without the CPU model backend (no
arm64 wheel of llama-cpp-python), and a development machine has no lgpio (the
Pi's extra): the self-test says so and still passes; any other missing
package fails it."""

from __future__ import annotations

import importlib

import pytest

from appliance import selftest


def _without(monkeypatch: pytest.MonkeyPatch, *missing: str) -> list[selftest.Check]:
    real = importlib.import_module

    def fake(name: str, *a, **k):
        if name in missing:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real(name, *a, **k)

    monkeypatch.setattr(selftest.importlib, "import_module", fake)
    return list(selftest._imports())


def test_missing_cpu_backend_is_a_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    checks = _without(monkeypatch, "llama_cpp", "lgpio")
    assert [(c.name, c.result) for c in checks] == [
        ("import lgpio", "skip"),
        ("import llama_cpp", "skip"),
        ("imports", "pass"),
    ]
    assert "extra 'pi'" in checks[0].detail and "extra 'cpu'" in checks[1].detail


def test_missing_required_package_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    checks = _without(monkeypatch, "tpm2_pytss", "lgpio", "llama_cpp")
    assert [(c.name, c.result) for c in checks][-1] == ("imports", "fail")
    assert "tpm2_pytss" in checks[-1].detail
