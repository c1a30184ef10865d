#!/bin/sh
# `make image-check`: the image recipe, checked as far as this machine allows.
# The Raspberry Pi package repository is not reachable from here, so the root
# file system is Debian's own arm64 trixie (the Pi image's Debian release and
# Python 3.13), built with mmdebstrap under qemu-user, and the Pi packages the
# recipe depends on are stand-ins installed the way the real ones install
# (image-build/standins/make-debs.py: the Hailo runtime, Python package and
# DKMS driver, and the boot firmware). Everything the appliance adds is the
# same as on the Pi image (customize.sh, strip-build-tools.sh,
# install-deploy.sh, stage.sh, bootcheck.py, imagetool.py, make-bundle.sh).
# Writes build/image-check/ and report.txt there; exits non-zero on the
# first failure, saying what failed.
set -eu
REPO=$(cd "$(dirname "$0")/.." && pwd)
HERE=$REPO/image-build
OUT=${IMAGE_CHECK_DIR:-$REPO/build/image-check}
SUITE=${IMAGE_CHECK_SUITE:-trixie}
PY=${PY:-$REPO/.venv/bin/python}
T0=$(date +%s)
mkdir -p "$OUT"
REPORT=$OUT/report.txt
: > "$REPORT"
say() { printf '[+%4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*" | tee -a "$REPORT"; }
fail() { say "FAILED: $*"; exit 1; }

# 1. arm64 programs run under qemu-user (binfmt_misc).
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    update-binfmts --enable qemu-aarch64
fi
grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 || fail "qemu-aarch64 is not registered"
say "qemu-aarch64 registered with binfmt_misc"

# 2. The appliance's wheel, and a throwaway release CA for this run (the real
#    release key is never here).
rm -rf "$OUT/dist" "$OUT/keys" "$OUT/src"
# From a copy without build/ (an earlier root file system) and .venv: the
# build backend would walk them.
mkdir -p "$OUT/src"
tar -C "$REPO" --exclude=./build --exclude=./.venv --exclude=./.git -cf - . | tar -C "$OUT/src" -xf -
"$PY" -m pip wheel -q --no-deps -w "$OUT/dist" "$OUT/src" > /dev/null
rm -rf "$OUT/src"
WHEEL=$(ls "$OUT"/dist/appliance-*.whl)
mkdir -p "$OUT/keys"
"$PY" - "$OUT/keys" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, ".")
from tests.deploy.conftest import make_ca
make_ca(Path(sys.argv[1]), "image-check")
PY
rm -rf "$OUT/standins"
python3 "$HERE/standins/make-debs.py" "$OUT/standins" > /dev/null
say "built $(basename "$WHEEL"); made a throwaway release CA and the Pi packages' stand-ins"

# 3. The arm64 root file system: Debian $SUITE, the stand-ins, the appliance
#    in its venv (hashes pinned), units enabled, build tools stripped (and a
#    strip that would take the Hailo driver, here by naming dkms among the
#    build tools, refused); then, inside it under emulation, check-in-root.sh.
ROOT=$OUT/rootfs
if [ "${IMAGE_CHECK_REUSE_ROOT:-}" = 1 ] && [ -s "$OUT/in-root.txt" ] && [ -x "$ROOT/opt/appliance/bin/appliance" ]; then
    # Iterating on the image steps: keep the root (and its in-root results) from the last run.
    say "reusing the root file system of the last run (IMAGE_CHECK_REUSE_ROOT=1)"
else
rm -rf "$ROOT"
mkdir -p "$OUT/pip-cache"
BUILD="python3-dev swig pkg-config libtss2-dev"
mmdebstrap --arch=arm64 --variant=apt --format=directory \
    --aptopt='APT::Install-Recommends "false"' \
    --include=systemd,systemd-sysv,dbus,python3,python3-venv,gcc,make,libc6-dev,dkms,nftables,rauc,rauc-service,openssl,ca-certificates,fdisk,$(echo "$BUILD" | tr ' ' ,) \
    --customize-hook='mkdir -p "$1/root/.cache/pip" "$1/tmp/standins"' \
    --customize-hook="sync-in '$OUT/pip-cache' /root/.cache/pip" \
    --customize-hook="sync-in '$OUT/standins' /tmp/standins" \
    --customize-hook='chroot "$1" sh -c "apt-get install -y -q /tmp/standins/*.deb" && rm -rf "$1/tmp/standins"' \
    --customize-hook="sh '$HERE/customize.sh' \"\$1\" '$HERE/requirements-check.txt' '$WHEEL' '$OUT/keys/ca.pem'" \
    --customize-hook="if sh '$HERE/strip-build-tools.sh' --simulate \"\$1\" dkms $BUILD 2> '$OUT/strip-refused.txt'; then echo 'a strip of dkms was not refused' >&2; exit 1; fi; grep -q h10-hailort-pcie-driver '$OUT/strip-refused.txt'" \
    --customize-hook="sh '$HERE/strip-build-tools.sh' \"\$1\" $BUILD" \
    --customize-hook="sh '$HERE/check-in-root.sh' \"\$1\" '$OUT'" \
    --customize-hook="sync-out /root/.cache/pip '$OUT/pip-cache'" \
    --customize-hook='rm -rf "$1/root/.cache/pip"' \
    "$SUITE" "$ROOT" > "$OUT/mmdebstrap.log" 2>&1 \
    || { tail -n 30 "$OUT/mmdebstrap.log"; fail "mmdebstrap (log: $OUT/mmdebstrap.log)"; }
fi
cat "$OUT/in-root.txt" >> "$REPORT"
say "arm64 $SUITE root file system built and checked inside ($(du -sm "$ROOT" | cut -f1) MiB)"
say "a strip that also named dkms was refused: $(cat "$OUT/strip-refused.txt" 2>/dev/null)"

# 4. The image: GPT, autoboot + A/B boot and root + data, without loop devices.
if grep -q " $ROOT/" /proc/mounts; then
    fail "something is still mounted under $ROOT (an interrupted earlier run?): umount -R -l it"
fi
rm -rf "$OUT/stage"
# (The root's boot firmware moves to the staged boot folder; a reused root
# gets it back from the last stage.)
if [ -d "$OUT/stage.last/boot" ] && [ -z "$(ls -A "$ROOT/boot/firmware" 2>/dev/null)" ]; then
    cp -a "$OUT/stage.last/boot/." "$ROOT/boot/firmware/"
fi
sh "$HERE/stage.sh" "$ROOT" "$OUT/stage"
rm -rf "$OUT/stage.last" && mkdir -p "$OUT/stage.last" && cp -a "$OUT/stage/boot" "$OUT/stage.last/"
# 4a. Every boot-time assumption (the HEF itself only declared: no model store here).
"$PY" "$HERE/bootcheck.py" --root "$ROOT" --boot "$OUT/stage/boot" --hef declared \
    > "$OUT/bootcheck.txt" 2>&1 || { cat "$OUT/bootcheck.txt"; fail "bootcheck.py"; }
tee -a "$REPORT" < "$OUT/bootcheck.txt"
IMG=$OUT/appliance-check-arm64.img
# (No pipes into tee here: a pipeline's status is tee's, and a failure must stop.)
"$PY" "$HERE/imagetool.py" assemble --layout "$HERE/layout.json" \
    --stage "autoboot=$OUT/stage/autoboot" --stage "boot=$OUT/stage/boot" \
    --stage "root=$OUT/stage/root" "$IMG" > "$OUT/assemble.txt" || fail "image assembly"
"$PY" "$HERE/imagetool.py" check --layout "$HERE/layout.json" --boot-file kernel_2712.img \
    --boot-file bcm2712-rpi-5-b.dtb --boot-file overlays "$IMG" >> "$OUT/assemble.txt" \
    || fail "image check"
"$PY" "$HERE/growcheck.py" "$IMG" >> "$OUT/assemble.txt" || fail "data partition growth"
tee -a "$REPORT" < "$OUT/assemble.txt"
xz -T2 -1 -f -k "$IMG"
(cd "$OUT" && sha256sum "$(basename "$IMG").xz" > "$(basename "$IMG").xz.sha256")
"$PY" "$HERE/imager-json.py" "$IMG" "$IMG.xz" > "$OUT/os_list_imagingutility.json"
say "image $(basename "$IMG").xz ($(du -m "$IMG.xz" | cut -f1) MiB), sha256 and Imager entry written"

# 5. A signed update bundle of this root; verified; a tampered copy refused.
SIZE=$(( $(du -sm "$ROOT" | cut -f1) * 13 / 10 + 64 ))
rm -f "$OUT/root.ext4" "$OUT/boot.vfat"
mkfs.ext4 -q -F -L rootA -d "$ROOT" "$OUT/root.ext4" "${SIZE}M"
mkfs.vfat -F 32 -s 1 -n BOOT -C "$OUT/boot.vfat" 131072 > /dev/null
mcopy -s -i "$OUT/boot.vfat" "$OUT"/stage/boot/* ::/
sh "$HERE/make-bundle.sh" "$OUT/boot.vfat" "$OUT/root.ext4" "check-$(date +%Y%m%d)" \
    "$OUT/keys/rel.pem" "$OUT/keys/rel.key" "$OUT/update.raucb" > "$OUT/bundle.log" 2>&1 \
    || fail "rauc bundle (log: $OUT/bundle.log)"
rauc info --keyring="$OUT/keys/ca.pem" "$OUT/update.raucb" > /dev/null 2>&1 || fail "signature does not verify"
rm -rf "$OUT/extract"
rauc extract --keyring="$OUT/keys/ca.pem" "$OUT/update.raucb" "$OUT/extract" > /dev/null 2>&1 \
    || fail "payload does not verify"
rm -rf "$OUT/extract"
say "bundle update.raucb ($(du -m "$OUT/update.raucb" | cut -f1) MiB): signature and payload verify"
cp "$OUT/update.raucb" "$OUT/tampered.raucb"
SZ=$(stat -c %s "$OUT/tampered.raucb")
printf 'X' | dd of="$OUT/tampered.raucb" bs=1 seek=$((SZ / 2)) conv=notrunc status=none
if rauc extract --keyring="$OUT/keys/ca.pem" "$OUT/tampered.raucb" "$OUT/extract" > "$OUT/tampered.log" 2>&1; then
    fail "a tampered bundle was accepted"
fi
rm -rf "$OUT/extract" "$OUT/tampered.raucb" "$OUT/root.ext4" "$OUT/boot.vfat"
say "tampered bundle refused: $(grep -m1 -i 'fail\|corrupt' "$OUT/tampered.log")"
say "image-check passed in $(( $(date +%s) - T0 )) s"
