#!/bin/sh
# Checks run inside the arm64 root file system under emulation (an mmdebstrap
# customize hook of image-check.sh): the target's own systemd-analyze on the
# units (any warning fails), their exposure, `appliance --version` and the
# software self-test. Results go to OUT/in-root.txt.
set -eu
ROOT=$1 OUT=$2
R=$OUT/in-root.txt
: > "$R"
fail() { echo "FAILED inside the root: $*" | tee -a "$R" >&2; exit 1; }
in_root() { chroot "$ROOT" "$@"; }
UNITS="/usr/lib/systemd/system/appliance-broker.service /usr/lib/systemd/system/appliance-agent.service /usr/lib/systemd/system/appliance-pairing-hint.service"

# shellcheck disable=SC2086
err=$(in_root systemd-analyze verify $UNITS 2>&1 >/dev/null) || fail "systemd-analyze verify: $err"
[ -z "$err" ] || fail "systemd-analyze verify warned: $err"
echo "inside: $(in_root systemd-analyze --version | head -n1): verify of the 3 units is clean" >> "$R"
for unit in appliance-agent:2.0 appliance-broker:3.5; do
    name=${unit%%:*} max=${unit#*:}
    level=$(in_root systemd-analyze security --offline=true "/usr/lib/systemd/system/$name.service" 2>&1 \
        | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
    [ -n "$level" ] || fail "no exposure level for $name"
    awk -v l="$level" -v m="$max" 'BEGIN { exit !(l <= m) }' || fail "$name exposure $level > $max"
    echo "inside: $name exposure $level (target <= $max)" >> "$R"
done
version=$(in_root appliance --version) || fail "appliance --version"
echo "inside: $version" >> "$R"
in_root appliance selftest > "$OUT/selftest.txt" 2>&1 || { cat "$OUT/selftest.txt" >&2; fail "appliance selftest"; }
echo "inside: appliance selftest passed:" >> "$R"
sed 's/^/    /' "$OUT/selftest.txt" >> "$R"
# (nft -c needs netlink, which qemu-user does not translate: the ruleset is
# checked with the host's nft in make test.)
in_root sh -c 'test "$(id -u appliance-broker)" = 940 && test "$(id -u appliance-agent)" = 941' \
    || fail "users not made with their fixed ids"
echo "inside: users appliance-broker (940), appliance-agent (941)" >> "$R"
