#!/bin/sh
# The flashable Raspberry Pi 5 image: Raspberry Pi OS (trixie, arm64) Lite's
# packages, the Hailo runtime for the AI HAT+ 2, the appliance in its own
# hash-pinned virtual environment, its units enabled, SSH off.
#
#   RELEASE_KEYRING=release-ca.pem [IMAGE_URL=https://.../appliance.img.xz] \
#       image-build/build-pi-image.sh OUTDIR
#
# Needs: root, mmdebstrap, qemu-user-static + binfmt-support (or an arm64
# host: then it runs natively and much faster), mtools, dosfstools,
# e2fsprogs, fdisk, xz-utils, device-tree-compiler, python3 (3.11+), the
# Raspberry Pi package repository (archive.raspberrypi.com) and Hailo's
# model store (dev-public.hailo.ai, for the HEF) reachable. Output in OUTDIR: appliance.img.xz,
# appliance.img.xz.sha256, os_list_imagingutility.json (Raspberry Pi Imager).
# RELEASE_KEYRING is the release CA *certificate* (public) that RAUC checks
# update bundles against; the release private key never comes near a build.
set -eu
OUT=${1:?usage: build-pi-image.sh OUTDIR}
: "${RELEASE_KEYRING:?set RELEASE_KEYRING to the release CA certificate (PEM)}"
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PY=${PY:-python3}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# The Raspberry Pi repository's signing key (the raspberrypi-archive-keyring
# package installs the same key inside the image for later apt use).
KEY=$OUT/raspberrypi-archive-keyring.gpg
[ -s "$KEY" ] || { echo "put the Raspberry Pi archive key (raspberrypi.gpg.key, dearmored) at $KEY" >&2; exit 1; }

rm -rf "$OUT/dist" "$OUT/src"
mkdir -p "$OUT/src"
tar -C "$REPO" --exclude=./build --exclude=./.venv --exclude=./.git -cf - . | tar -C "$OUT/src" -xf -
"$PY" -m pip wheel -q --no-deps -w "$OUT/dist" "$OUT/src"
rm -rf "$OUT/src"
WHEEL=$(ls "$OUT"/dist/appliance-*.whl)

# Raspberry Pi OS Lite's core, as its own image builds list it, plus what the
# appliance needs. The Hailo packages come at the one HailoRT version of
# hailo.toml (an apt pin set up before anything installs; held afterwards);
# their kernel module is built by DKMS against the Pi kernel's headers.
# The build tools are removed again after the venv is made (llama-cpp-python,
# tpm2-pytss and lgpio compile natively here); gcc and make stay, because
# dkms depends on them and removing dkms would remove the Hailo driver.
PI_OS="raspberrypi-archive-keyring,raspberrypi-sys-mods,raspi-firmware,linux-image-rpi-2712,rpi-eeprom,raspi-utils,raspi-config,systemd-sysv,systemd-timesyncd,udev,dbus,network-manager,avahi-daemon,ca-certificates,sudo,less,nano,openssh-server,firmware-brcm80211,wpasupplicant"
APPLIANCE="python3,python3-venv,nftables,rauc,rauc-service,openssl,fdisk,dkms,gcc,make,hailo-h10-all"
BUILD="python3-dev,g++,cmake,pkg-config,swig,libtss2-dev,linux-headers-rpi-2712"

ROOT=$OUT/rootfs
rm -rf "$ROOT"
mmdebstrap --arch=arm64 --variant=apt --format=directory \
    --keyring=/usr/share/keyrings/debian-archive-keyring.gpg --keyring="$KEY" \
    --include="$PI_OS,$APPLIANCE,$BUILD" \
    --setup-hook='mkdir -p "$1/etc/apt/preferences.d"' \
    --setup-hook="'$PY' '$HERE/hailo.py' apt-preferences > \"\$1/etc/apt/preferences.d/appliance-hailo.pref\"" \
    --customize-hook="sh '$HERE/customize.sh' \"\$1\" '$HERE/requirements-pi.txt' '$WHEEL' '$RELEASE_KEYRING'" \
    --customize-hook="sh '$HERE/strip-build-tools.sh' \"\$1\" $(echo "$BUILD" | tr , ' ')" \
    --customize-hook='rm -rf "$1/root/.cache"' \
    trixie "$ROOT" \
    "deb http://deb.debian.org/debian trixie main contrib non-free non-free-firmware" \
    "deb http://deb.debian.org/debian-security trixie-security main contrib non-free non-free-firmware" \
    "deb http://archive.raspberrypi.com/debian trixie main"

# The agent's model: its HEF from Hailo's model store, for the pinned HailoRT
# version, checked against the pinned sha256 (hailo.toml), read-only.
"$PY" "$HERE/hailo.py" fetch "$ROOT" --cache "$OUT/hef-cache"

# The update publisher's PCR-policy key and the signed policy for this
# build's code (docs/sealing.md): produced by the release process.
if [ -n "${POLICY_DIR:-}" ]; then
    install -D -m 0644 "$POLICY_DIR/policy-signer.pub.pem" "$ROOT/usr/share/appliance/keys/policy-signer.pub.pem"
    install -D -m 0644 "$POLICY_DIR/pcr-policy.json" "$ROOT/usr/share/appliance/keys/pcr-policy.json"
else
    echo "warning: no POLICY_DIR: the image has no publisher PCR policy; the broker will refuse to start" >&2
fi

sh "$HERE/stage.sh" "$ROOT" "$OUT/stage"
# Every boot-time assumption, before it becomes an image (bootcheck.py).
"$PY" "$HERE/bootcheck.py" --root "$ROOT" --boot "$OUT/stage/boot" --hef required
"$PY" "$HERE/imagetool.py" assemble --layout "$HERE/layout.json" \
    --stage "autoboot=$OUT/stage/autoboot" --stage "boot=$OUT/stage/boot" \
    --stage "root=$OUT/stage/root" "$OUT/appliance.img"
"$PY" "$HERE/imagetool.py" check --layout "$HERE/layout.json" \
    --boot-file kernel_2712.img --boot-file bcm2712-rpi-5-b.dtb --boot-file overlays \
    "$OUT/appliance.img"
xz -T0 -9 -f -k "$OUT/appliance.img"
(cd "$OUT" && sha256sum appliance.img.xz > appliance.img.xz.sha256)
"$PY" "$HERE/imager-json.py" "$OUT/appliance.img" "$OUT/appliance.img.xz" \
    ${IMAGE_URL:+--url "$IMAGE_URL"} > "$OUT/os_list_imagingutility.json"
echo "built $OUT/appliance.img.xz"
