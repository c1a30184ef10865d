#!/bin/sh
# Build a signed RAUC update bundle (verity format) from a boot image (FAT)
# and a root file system image (ext4).
#   make-bundle.sh BOOT.vfat ROOT.ext4 VERSION CERT KEY OUT.raucb
# CERT/KEY: the release signing certificate and key. The private release key
# is never in this repository: on a release machine it is a file (or a
# PKCS#11 URI: pass it as KEY) kept offline.
set -eu
BOOT=$1 ROOTFS=$2 VERSION=$3 CERT=$4 KEY=$5 OUT=$6
HERE=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/bundle"
cp "$BOOT" "$work/bundle/boot.vfat"
cp "$ROOTFS" "$work/bundle/root.ext4"
cp "$HERE/rauc/hook" "$work/bundle/hook"
cat > "$work/bundle/manifest.raucm" <<MANIFEST
[update]
compatible=safe-agent-appliance-rpi5
version=$VERSION

[bundle]
format=verity

[hooks]
filename=hook

[image.rootfs]
filename=root.ext4
hooks=post-install

[image.boot]
filename=boot.vfat
hooks=post-install
MANIFEST
rm -f "$OUT"
rauc bundle --cert="$CERT" --key="$KEY" "$work/bundle" "$OUT"
