#!/bin/sh
# Grow the data partition (PARTLABEL=data, the last one) to the end of the
# card, at boot before /data is mounted: the image is made small, the card
# is not. Installed as /usr/lib/appliance/grow-data and run by
# appliance-grow-data.service, which /etc/fstab's /data line requires; the
# ext4 file system follows once mounted (x-systemd.growfs on that line).
# After the first boot it finds nothing to do and writes nothing.
#
#   grow-data [DISK PARTITION]   (default: the disk holding PARTLABEL=data;
#                                 DISK may be an image file, for the check)
#
# It never fails the boot: a problem is logged and /data keeps its size.
set -u
log() { echo "grow-data: $*" >&2; }
PATH=/usr/sbin:/usr/bin:/sbin:/bin

if [ $# -ge 2 ]; then
    DISK=$1 N=$2
else
    PART=$(readlink -f /dev/disk/by-partlabel/data) || { log "no data partition"; exit 0; }
    NAME=$(basename "$PART")
    N=$(cat "/sys/class/block/$NAME/partition" 2>/dev/null) || { log "$PART is not a partition"; exit 0; }
    DISK=/dev/$(basename "$(readlink -f "/sys/class/block/$NAME/..")")
fi

row() { echo "$1" | grep ' : start=' | sed -n "${N}p"; }
field() { echo "$1" | sed -n "s/.*$2= *\([0-9]*\).*/\1/p"; }
DUMP=$(sfdisk --dump "$DISK" 2>/dev/null) || { log "cannot read the table of $DISK"; exit 0; }
case "$(row "$DUMP")" in
    *'name="data"'*) ;;
    *) log "partition $N of $DISK is not the data partition; nothing done"; exit 0 ;;
esac
# Flashed onto a bigger card, the GPT's backup header is where the image
# ended, not at the card's end: put it there (without this, the space after
# it is not usable).
if ! sfdisk --no-reread --no-tell-kernel --relocate gpt-bak-std "$DISK" >/dev/null 2>&1; then
    log "cannot move the backup GPT header to the end of $DISK; /data keeps its size"
    exit 0
fi
DUMP=$(sfdisk --dump "$DISK" 2>/dev/null) || { log "cannot read the table of $DISK"; exit 0; }
LAST=$(echo "$DUMP" | sed -n 's/^last-lba: *//p')
START=$(field "$(row "$DUMP")" start)
SIZE=$(field "$(row "$DUMP")" size)
if [ -z "$LAST" ] || [ -z "$START" ] || [ -z "$SIZE" ]; then
    log "cannot read partition $N of $DISK"
    exit 0
fi
# Within 1 MiB of the end already: nothing to do (every boot after the first).
if [ $((LAST - START - SIZE + 1)) -lt 2048 ]; then
    exit 0
fi
# Same start, as large as the disk allows; nothing else in the table changes.
if ! echo ", +" | sfdisk --no-reread --no-tell-kernel -N "$N" "$DISK" >/dev/null 2>&1; then
    log "could not grow partition $N of $DISK; /data keeps its size"
    exit 0
fi
if [ -b "$DISK" ] && ! partx -u -n "$N" "$DISK"; then
    log "the kernel did not take the new size of partition $N; it will at the next boot"
fi
NEW=$(field "$(row "$(sfdisk --dump "$DISK")")" size)
log "grew partition $N of $DISK from $((SIZE / 2048)) MiB to $((NEW / 2048)) MiB"
exit 0
