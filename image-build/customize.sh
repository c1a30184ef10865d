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

# Its own virtual environment, every package checked against its hash.
in_root python3 -m venv /opt/appliance
in_root /opt/appliance/bin/pip install --disable-pip-version-check --no-input -q \
    --require-hashes -r /tmp/appliance/requirements.txt
in_root /opt/appliance/bin/pip install --disable-pip-version-check --no-input -q \
    --require-hashes --no-deps -r /tmp/appliance/appliance.txt
ln -sf /opt/appliance/bin/appliance "$ROOT/usr/bin/appliance"
rm -rf "$ROOT/tmp/appliance"

# Units, users, folders, configuration, firewall, RAUC.
sh "$HERE/install-deploy.sh" "$ROOT"
install -D -m 0644 "$KEYRING" "$ROOT/etc/rauc/keyring.pem"
in_root systemd-sysusers
in_root systemctl enable appliance-broker.service appliance-agent.service \
    appliance-pairing-hint.service nftables.service
# SSH off by default: the owner turns it on at the console if wanted.
for unit in ssh.service ssh.socket sshswitch.service; do
    if [ -e "$ROOT/usr/lib/systemd/system/$unit" ] || [ -e "$ROOT/lib/systemd/system/$unit" ]; then
        in_root systemctl disable "$unit" 2>/dev/null || true
        in_root systemctl mask "$unit"
    fi
done
