"""The first boot's assumptions (image-build/bootcheck.py), each shown to fail
on a deliberately broken copy of a staged root: the recipe as it was before
each fix. The root is staged on this machine by the recipe's own scripts
(install-deploy.sh, expose-system-package.sh, stage.sh) with the stand-ins of
the Raspberry Pi packages (standins/make-debs.py) unpacked into it; the
arm64 build of the same recipe is `make image-check`."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.deploy.conftest import IMAGE_BUILD, make_ca, need, run, stage_minimal_root

sys.path.insert(0, str(IMAGE_BUILD))
sys.path.insert(0, str(IMAGE_BUILD / "standins"))
import bootcheck  # noqa: E402
import hailo  # noqa: E402
import hailo_ollama  # noqa: E402

CODER = "usr/share/appliance/models/hailo-qwen2.5-coder-1.5b-instruct.toml"


def _standins(root: Path, debs: Path) -> None:
    """Unpack the stand-in packages and record them as customize.sh leaves them: held."""
    proc = run(sys.executable, IMAGE_BUILD / "standins/make-debs.py", debs)
    assert proc.returncode == 0, proc.stderr
    status = []
    for deb in sorted(debs.glob("*.deb")):
        assert run("dpkg-deb", "-x", deb, root).returncode == 0
        fields = run("dpkg-deb", "-f", deb, "Package", "Version").stdout
        status.append(fields + "Status: hold ok installed\n")
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text("\n".join(status))


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> bootcheck.Staged:
    need("systemctl", "openssl", "dpkg-deb", "dtc")
    d = tmp_path_factory.mktemp("firstboot")
    ca, _, _ = make_ca(d / "keys", "test release")
    root = d / "rootfs"
    stage_minimal_root(root, ca)
    _standins(root, d / "debs")
    # The venv as customize.sh makes it (its files only: the import itself is
    # tried inside the arm64 root by make image-check).
    site = root / "opt/appliance/lib/python3.13/site-packages"
    (site / "appliance").mkdir(parents=True)
    shutil.copy(IMAGE_BUILD.parent / "appliance/update.py", site / "appliance/update.py")
    (root / "opt/appliance/pyvenv.cfg").write_text("include-system-site-packages = false\n")
    proc = run("sh", IMAGE_BUILD / "expose-system-package.sh", root, "/opt/appliance",
               "hailo_platform")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    proc = run("sh", IMAGE_BUILD / "stage.sh", root, d / "stage")
    assert proc.returncode == 0, proc.stderr
    return bootcheck.Staged(root, d / "stage/boot")


def broken(staged: bootcheck.Staged, tmp: Path) -> bootcheck.Staged:
    """A copy to break."""
    root, boot = tmp / "root", tmp / "boot"
    shutil.copytree(staged.root, root, symlinks=True)
    shutil.copytree(staged.boot, boot, symlinks=True)
    return bootcheck.Staged(root, boot)


def failure(check: Callable[[bootcheck.Staged], str], t: bootcheck.Staged) -> str:
    with pytest.raises(bootcheck.CheckFailed) as e:
        check(t)
    return str(e.value)


def test_the_fixed_recipe_passes_every_check(staged: bootcheck.Staged) -> None:
    ok, bad = bootcheck.run(staged, hef_required=False)
    assert bad == [], bad
    text = "\n".join(ok)
    assert "appliance-system-packages.pth exposes /usr/lib/python3/dist-packages/hailo_" in text
    assert "Qwen2.5-Coder-1.5B-Instruct.hef, sha256 88aa7633" in text
    assert "each with its .dtbo: appliance-panel, tpm-slb9670" in text
    assert "hailo1x_pci.ko" in text and "RuntimeWatchdogSec=15s" in text


# ---------------------------------------------------------------------- the eight breakages


def test_1_a_venv_without_the_system_package_cannot_import_hailo(
    staged: bootcheck.Staged, tmp_path: Path
) -> None:
    t = broken(staged, tmp_path)
    for pth in t.root.glob("opt/appliance/lib/python3*/site-packages/*.pth"):
        pth.unlink()  # the venv as the recipe made it before: no .pth
    assert "cannot import hailo_platform" in failure(bootcheck.venv_sees_hailo_platform, t)
    shutil.rmtree(t.root / "usr/lib/python3/dist-packages/hailo_platform")
    assert "python3-h10-hailort" in failure(bootcheck.venv_sees_hailo_platform, t)


def test_2_no_hef_installed(staged: bootcheck.Staged, tmp_path: Path) -> None:
    t = broken(staged, tmp_path)
    # The Pi build requires the file itself...
    assert "is not on the image" in failure(bootcheck.agent_hef_installed, t)
    # ...and the recipe before named no model for the agent to run at all.
    env = t.root / "etc/appliance/agent.env"
    env.write_text("BROKER_UID=940\n")
    assert "names no AGENT_MODEL" in failure(bootcheck.agent_hef_declared, t)


def test_2_the_hef_present_with_its_hash_passes_and_a_changed_one_fails(
    staged: bootcheck.Staged, tmp_path: Path
) -> None:
    t = broken(staged, tmp_path)
    hef = b"a HEF for the test"
    digest = hashlib.sha256(hef).hexdigest()
    _pin_test_hef(t.root, digest)
    path = t.root / "usr/local/hailo/resources/models/hailo10h/Qwen2.5-Coder-1.5B-Instruct.hef"
    path.parent.mkdir(parents=True)
    path.write_bytes(hef)
    path.chmod(0o444)
    assert bootcheck.agent_hef_installed(t).endswith(f"present, sha256 {digest}")
    path.chmod(0o644)
    path.write_bytes(hef + b"!")
    path.chmod(0o444)
    assert "has sha256" in failure(bootcheck.agent_hef_installed, t)


def _pin_test_hef(root: Path, digest: str) -> None:
    """Point the coder manifest and the installed pin at a test file's hash."""
    manifest = root / CODER
    text = manifest.read_text()
    old = tomllib.loads(text)["sha256"]
    manifest.write_text(text.replace(old, digest))
    pin = root / "usr/share/appliance/hailo.toml"
    pin.write_text(pin.read_text().replace(old, digest))


def test_3_hashes_of_another_version_or_a_wrong_file_name_fail(
    staged: bootcheck.Staged, tmp_path: Path
) -> None:
    t = broken(staged, tmp_path)
    manifest = t.root / CODER
    pinned = "88aa7633ebe3385452430ae19f2b459b5a00791cab035576a3262a41ec1350f5"
    five_oh_one = "872d018a457d9a173c3005dcfa96f63a8ed5befc9bce11f1a16502e2161e5c25"
    manifest.write_text(manifest.read_text().replace(pinned, five_oh_one))
    assert "is not Qwen2.5-Coder-1.5B-Instruct.hef of HailoRT 5.1.1" in failure(
        bootcheck.manifests_pinned, t
    )
    assert "is not the HailoRT 5.1.1 HEF's" in failure(bootcheck.agent_hef_declared, t)
    manifest.write_text(manifest.read_text().replace(five_oh_one, pinned))
    llama = t.root / "usr/share/appliance/models/hailo-llama3.2-3b-instruct.toml"
    llama.write_text(
        llama.read_text().replace("Llama-3_2-3B-Instruct.hef", "Llama3.2-3B-Instruct.hef")
    )
    assert "no HEF named Llama3.2-3B-Instruct.hef" in failure(bootcheck.manifests_pinned, t)


def test_3_the_hailo_packages_must_be_held_at_the_version(
    staged: bootcheck.Staged, tmp_path: Path
) -> None:
    t = broken(staged, tmp_path)
    status = t.root / "var/lib/dpkg/status"
    text = status.read_text()
    status.write_text(text.replace("Status: hold ok installed", "Status: install ok installed"))
    assert "is not held" in failure(bootcheck.hailo_packages_held, t)
    status.write_text(text.replace("Version: 5.1.1-1", "Version: 5.2.0-1"))
    assert "python3-h10-hailort is 5.2.0-1, not HailoRT 5.1.1" in failure(
        bootcheck.hailo_packages_held, t
    )


def test_3_every_hailo_manifest_in_the_tree_is_pinned() -> None:
    """The repository's own manifests against the repository's pin (fast, no root)."""
    pin = hailo.load_pin()
    for path in sorted((IMAGE_BUILD.parent / "models").glob("*.toml")):
        m = tomllib.loads(path.read_text())
        if m["backend"] == "hailo" and m["sha256"]:
            assert pin.hefs.get(Path(m["file"]).name) == m["sha256"], path.name
        if m["backend"] == "ollama":
            assert m["sha256"] in pin.hefs.values(), path.name


def test_4_hailo_ollama_refuses_a_format_object_and_takes_the_backends_request() -> None:
    """hailo-ollama reads `format` as a string: the object the backend sent
    before is refused; what it sends now is taken (the same stand-in runs
    inside the arm64 root in make image-check)."""
    body = {"model": "qwen2.5-instruct:1.5b", "messages": [], "stream": False}
    assert hailo_ollama.problems({**body, "format": {"type": "object"}}) == [
        "format must be str, not dict"
    ]
    from appliance.agent.backends import OllamaBackend
    from appliance.agent.models import MODELS_DIR, load_manifest

    server, url = hailo_ollama.serve()
    hailo_ollama.Handler.replies = ['{"steps": []}']
    backend = OllamaBackend(load_manifest(MODELS_DIR / "ollama-qwen2.5-instruct-1.5b.toml"),
                            base_url=url)  # fmt: skip
    try:
        schema = {"type": "object", "properties": {"steps": {"type": "array"}}}
        out = backend.generate("s", "u", json_schema=schema, max_tokens=32)
        assert json.loads(out.text) == {"steps": []}
        assert "format" not in hailo_ollama.Handler.seen[0]
    finally:
        backend.close()
        server.shutdown()


def test_5_an_overlay_without_its_dtbo_fails(staged: bootcheck.Staged, tmp_path: Path) -> None:
    t = broken(staged, tmp_path)
    (t.boot / "overlays/appliance-panel.dtbo").unlink()  # stage.sh compiled none before
    assert "overlays/appliance-panel.dtbo" in failure(bootcheck.overlays_present, t)


def test_6_a_read_only_root_fails(staged: bootcheck.Staged, tmp_path: Path) -> None:
    t = broken(staged, tmp_path)
    cmdline = t.boot / "cmdline.txt"
    cmdline.write_text(cmdline.read_text().replace(" rw ", " "))
    assert "does not mount the root read-write" in failure(bootcheck.root_read_write, t)
    cmdline.write_text(cmdline.read_text().replace("rootwait", "rw rootwait"))
    fstab = t.root / "etc/fstab"
    fstab.write_text("".join(ln for ln in fstab.read_text().splitlines(True) if " / " not in ln))
    assert "no line for /" in failure(bootcheck.root_read_write, t)


def test_7_no_mark_good_unit_fails(staged: bootcheck.Staged, tmp_path: Path) -> None:
    t = broken(staged, tmp_path)
    (t.root / "etc/systemd/system/multi-user.target.wants/appliance-mark-good.service").unlink()
    assert "is not enabled" in failure(bootcheck.updates_made_permanent, t)
    (t.root / "usr/lib/systemd/system/appliance-mark-good.service").unlink()
    assert "is not installed" in failure(bootcheck.updates_made_permanent, t)


def test_8_an_idle_watchdog_fails(staged: bootcheck.Staged, tmp_path: Path) -> None:
    t = broken(staged, tmp_path)
    config = t.boot / "config.txt"
    config.write_text(config.read_text() + "dtparam=watchdog=on\n")
    assert "not a Pi 5 parameter" in failure(bootcheck.watchdog_armed, t)
    config.write_text(config.read_text().replace("dtparam=watchdog=on\n", ""))
    (t.root / "usr/lib/systemd/system.conf.d/appliance-watchdog.conf").unlink()
    assert "the watchdog is idle" in failure(bootcheck.watchdog_armed, t)


# ---------------------------------------------------------------------- the risky list


def test_the_agent_unit_allows_both_device_nodes_and_no_hailort_log(
    staged: bootcheck.Staged, tmp_path: Path
) -> None:
    t = broken(staged, tmp_path)
    unit = t.root / "usr/lib/systemd/system/appliance-agent.service"
    text = unit.read_text()
    unit.write_text(text.replace("Environment=HAILORT_LOGGER_PATH=NONE\n", ""))
    assert "HAILORT_LOGGER_PATH=NONE" in failure(bootcheck.agent_unit_for_hailo, t)
    unit.write_text(text.replace("DeviceAllow=/dev/h1x-0 rw\n", ""))
    assert "/dev/h1x-0" in failure(bootcheck.agent_unit_for_hailo, t)


def test_a_root_without_the_hailo_module_fails(staged: bootcheck.Staged, tmp_path: Path) -> None:
    t = broken(staged, tmp_path)
    for ko in (t.root / "usr/lib/modules").rglob("hailo*.ko*"):
        ko.unlink()  # what purging dkms (and with it the driver package) leaves
    assert "no hailo*.ko" in failure(bootcheck.hailo_module_built, t)


def test_bootcheck_exits_non_zero_and_names_each_failure(
    staged: bootcheck.Staged, tmp_path: Path
) -> None:
    t = broken(staged, tmp_path)
    (t.boot / "overlays/appliance-panel.dtbo").unlink()
    proc = run(sys.executable, IMAGE_BUILD / "bootcheck.py", "--root", t.root, "--boot", t.boot)
    assert proc.returncode == 1
    assert "FAILED: overlays present" in proc.stderr
    assert "FAILED: agent HEF installed" in proc.stderr  # --hef required is the default


# ---------------------------------------------------------------------- fetching the HEF


def test_fetch_installs_a_hef_with_the_pinned_hash_read_only(
    staged: bootcheck.Staged, tmp_path: Path
) -> None:
    t = broken(staged, tmp_path)
    store = tmp_path / "store"
    store.mkdir()
    (store / "Qwen2.5-Coder-1.5B-Instruct.hef").write_bytes(b"the HEF")
    digest = hashlib.sha256(b"the HEF").hexdigest()
    _pin_test_hef(t.root, digest)
    pin = hailo.load_pin(t.root / "usr/share/appliance/hailo.toml")
    path = hailo.fetch(t.root, tmp_path / "cache", pin, f"file://{store}/{{file}}")
    assert path.read_bytes() == b"the HEF" and (path.stat().st_mode & 0o777) == 0o444
    assert bootcheck.agent_hef_installed(t).endswith(digest)
    # From the cache the second time, even with the store gone.
    shutil.rmtree(store)
    path.unlink()
    assert hailo.fetch(t.root, tmp_path / "cache", pin, "file:///nonexistent/{file}") == path


def test_fetch_refuses_a_file_with_another_hash(staged: bootcheck.Staged, tmp_path: Path) -> None:
    t = broken(staged, tmp_path)
    store = tmp_path / "store"
    store.mkdir()
    (store / "Qwen2.5-Coder-1.5B-Instruct.hef").write_bytes(b"not the pinned HEF")
    pin = hailo.load_pin(t.root / "usr/share/appliance/hailo.toml")
    with pytest.raises(hailo.HailoError, match="not the pinned"):
        hailo.fetch(t.root, tmp_path / "cache", pin, f"file://{store}/{{file}}")
    assert not (t.root / "usr/local/hailo/resources/models/hailo10h").exists()
    assert list((tmp_path / "cache").iterdir()) == []


def test_apt_pin_names_the_packages_at_the_version() -> None:
    text = hailo.apt_preferences(hailo.load_pin())
    assert "Package: hailo-h10-all h10-hailort h10-hailort-pcie-driver python3-h10-hailort" in text
    assert "Pin: version 5.1.1*" in text and "Pin-Priority: 1001" in text
