#!/bin/sh
# Split a built root file system into the image's staged folders:
#   OUT/autoboot  autoboot.txt (partition 1)
#   OUT/boot      the firmware, kernel, device trees from ROOT/boot/firmware,
#                 plus config.txt (with the overlays/ fragments), cmdline.txt
#                 and the appliance's own overlays compiled into overlays/
#   OUT/root      ROOT itself (its /boot/firmware left empty: the boot
#                 partition is mounted there), with /etc/fstab for the layout
# Usage: stage.sh ROOT OUT     (needs dtc, from device-tree-compiler)
set -eu
ROOT=$1 OUT=$2
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT/autoboot" "$OUT/boot"
cat > "$OUT/autoboot/autoboot.txt" <<AUTO
[all]
tryboot_a_b=1
boot_partition=2
[tryboot]
boot_partition=3
AUTO
if [ -d "$ROOT/boot/firmware" ]; then
    cp -a "$ROOT/boot/firmware/." "$OUT/boot/"
    find "$ROOT/boot/firmware" -mindepth 1 -delete
fi
cp "$HERE/boot/config.txt" "$OUT/boot/config.txt"
for fragment in "$HERE"/../overlays/*.txt; do
    printf '\n# from overlays/%s\n' "$(basename "$fragment")" >> "$OUT/boot/config.txt"
    grep -v '^#' "$fragment" >> "$OUT/boot/config.txt"
done
# The appliance's own device-tree overlays (dtoverlay=NAME needs overlays/NAME.dtbo).
mkdir -p "$OUT/boot/overlays"
for dts in "$HERE"/../overlays/*-overlay.dts; do
    name=$(basename "$dts" -overlay.dts)
    dtc -@ -q -I dts -O dtb -o "$OUT/boot/overlays/$name.dtbo" "$dts"
done
cp "$HERE/boot/cmdline.txt" "$OUT/boot/cmdline.txt"
mkdir -p "$ROOT/boot/firmware" "$ROOT/boot/autoboot" "$ROOT/data"
cat > "$ROOT/etc/fstab" <<FSTAB
# The root is whichever slot the firmware booted: cmdline.txt says
# root=PARTLABEL=rootA (or rootB) and rw; this line gives systemd the same
# partition and options (systemd-remount-fs), and RAUC's hook rewrites it for
# the slot it installs into. The boot partitions are not mounted: only RAUC
# writes them, as whole images. Partition 1 is mounted for the tryboot backend
# (autoboot.txt).
PARTLABEL=rootA    /               ext4  defaults,noatime                0 1
PARTLABEL=autoboot /boot/autoboot  vfat  defaults,noatime,umask=0077     0 2
# /data grows to the end of the card at the first boot (grow-data, then
# systemd-growfs once mounted).
PARTLABEL=data     /data           ext4  defaults,noatime,nodev,nosuid,x-systemd.requires=appliance-grow-data.service,x-systemd.growfs  0 2
FSTAB
rm -rf "$OUT/root"
ln -s "$(cd "$ROOT" && pwd)" "$OUT/root"
