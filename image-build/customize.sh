#!/bin/sh
# Put the appliance into a Debian-family root file system ROOT (run from the
# host as an mmdebstrap customize hook; commands inside ROOT run by chroot,
# under qemu-user when ROOT is arm64). The same steps for the Pi image and
# for `make image-check`.
#   customize.sh ROOT REQUIREMENTS WHEEL KEYRING
# REQUIREMENTS: pip requirements with --hash for every package (pip runs with
# --require-hashes); WHEEL: the appliance's own wheel, pinned to its sha256
# here; KEYRING: the release CA certificate RAUC checks bundles against.
set -eu
ROOT=$1 REQS=$2 WHEEL=$3 KEYRING=$4
HERE=$(cd "$(dirname "$0")" && pwd)
in_root() { chroot "$ROOT" "$@"; }

mkdir -p "$ROOT/tmp/appliance"
cp "$REQS" "$ROOT/tmp/appliance/requirements.txt"
cp "$WHEEL" "$ROOT/tmp/appliance/"
# The appliance itself, pinned to the hash of the wheel built for this image.
printf 'appliance @ file:///tmp/appliance/%s --hash=sha256:%s\n' \
    "$(basename "$WHEEL")" "$(sha256sum "$WHEEL" | cut -d' ' -f1)" \
    > "$ROOT/tmp/appliance/appliance.txt"

# pip inside the root sees none of the build host's pip settings; only a CA
# bundle the host trusts for PyPI (PIP_CERT, e.g. a company proxy's) is passed.
cert=
if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ]; then
    cp "$PIP_CERT" "$ROOT/tmp/appliance/ca.pem"
    cert="PIP_CERT=/tmp/appliance/ca.pem"
fi
pip_in_root() {
    # PYPI=1: lgpio has no wheel for trixie's Python 3.13 on arm64; its sdist
    # then builds a module with the lgpio C library linked in (its setup.py's
    # switch), needing nothing from the Raspberry Pi repository.
    # shellcheck disable=SC2086
    chroot "$ROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root PYPI=1 $cert \
        /opt/appliance/bin/pip install --disable-pip-version-check --no-input -q "$@"
}

# Its own virtual environment, every package checked against its hash.
rm -rf "$ROOT/opt/appliance"
in_root python3 -m venv /opt/appliance
pip_in_root --require-hashes -r /tmp/appliance/requirements.txt
pip_in_root --require-hashes --no-deps -r /tmp/appliance/appliance.txt
ln -sf /opt/appliance/bin/appliance "$ROOT/usr/bin/appliance"
rm -rf "$ROOT/tmp/appliance"

# HailoRT's Python package comes from the Debian package (python3-h10-hailort,
# into /usr/lib/python3/dist-packages), not from PyPI: the venv sees exactly
# that package and nothing else of the system's.
sh "$HERE/expose-system-package.sh" "$ROOT" /opt/appliance hailo_platform
# The Hailo packages stay at the one HailoRT version the HEFs are built for.
hold=$(python3 "$HERE/hailo.py" packages)
# shellcheck disable=SC2086
installed=$(chroot "$ROOT" dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' $hold 2>/dev/null \
    | awk '$1 == "ii" { print $2 }')
[ -n "$installed" ] || { echo "customize.sh: none of the Hailo packages ($hold) is installed" >&2; exit 1; }
# shellcheck disable=SC2086
in_root apt-mark hold $installed > /dev/null

# Units, users, folders, configuration, firewall, RAUC.
sh "$HERE/install-deploy.sh" "$ROOT"
install -D -m 0644 "$KEYRING" "$ROOT/etc/rauc/keyring.pem"
in_root systemd-sysusers
in_root systemctl enable appliance-broker.service appliance-agent.service \
    appliance-pairing-hint.service appliance-mark-good.service nftables.service
# SSH off by default: the owner turns it on at the console if wanted.
for unit in ssh.service ssh.socket sshswitch.service; do
    if [ -e "$ROOT/usr/lib/systemd/system/$unit" ] || [ -e "$ROOT/lib/systemd/system/$unit" ]; then
        in_root systemctl disable "$unit" 2>/dev/null || true
        in_root systemctl mask "$unit"
    fi
done
