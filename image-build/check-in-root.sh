#!/bin/sh
# Checks run inside the arm64 root file system under emulation (an mmdebstrap
# customize hook of image-check.sh): the target's own systemd-analyze on the
# units (any warning fails), their exposure, the watchdog drop-in as systemd
# reads it, what the venv can import (the Debian package's hailo_platform,
# lgpio built for this Python), `appliance --version`, `appliance update`,
# the Ollama backend against a stand-in of hailo-ollama's request types, and
# the software self-test. Each positive check that guards a first-boot
# breakage has its negative control here too. Results go to OUT/in-root.txt.
set -eu
ROOT=$1 OUT=$2
HERE=$(cd "$(dirname "$0")" && pwd)
R=$OUT/in-root.txt
: > "$R"
fail() { echo "FAILED inside the root: $*" | tee -a "$R" >&2; exit 1; }
in_root() { chroot "$ROOT" "$@"; }
say() { echo "inside: $*" >> "$R"; }
UNITS=""
for u in appliance-broker appliance-agent appliance-pairing-hint appliance-mark-good; do
    UNITS="$UNITS /usr/lib/systemd/system/$u.service"
done

# shellcheck disable=SC2086
err=$(in_root systemd-analyze verify $UNITS 2>&1 >/dev/null) || fail "systemd-analyze verify: $err"
[ -z "$err" ] || fail "systemd-analyze verify warned: $err"
say "$(in_root systemd-analyze --version | head -n1): verify of the 4 units is clean"
for unit in appliance-agent:2.0 appliance-broker:3.5; do
    name=${unit%%:*} max=${unit#*:}
    level=$(in_root systemd-analyze security --offline=true "/usr/lib/systemd/system/$name.service" 2>&1 \
        | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
    [ -n "$level" ] || fail "no exposure level for $name"
    awk -v l="$level" -v m="$max" 'BEGIN { exit !(l <= m) }' || fail "$name exposure $level > $max"
    say "$name exposure $level (target <= $max)"
done
wd=$(in_root systemd-analyze cat-config systemd/system.conf | grep '^RuntimeWatchdogSec=' | tail -n1)
[ -n "$wd" ] && [ "$wd" != "RuntimeWatchdogSec=0" ] || fail "systemd's configuration arms no watchdog"
say "systemd's configuration (cat-config): $wd"

# The venv imports HailoRT's package from the Debian package (here its
# stand-in, installed the same way), and only through the recipe's .pth: a
# venv made without it (the recipe before) cannot.
got=$(in_root /opt/appliance/bin/python -c 'import hailo_platform, hailo_platform.genai as g; print(hailo_platform.__version__, hailo_platform.__file__, g.LLM.__name__)') \
    || fail "the venv cannot import hailo_platform.genai"
say "the venv imports hailo_platform $got"
in_root python3 -m venv --without-pip /tmp/plain-venv
if in_root /tmp/plain-venv/bin/python -c 'import hailo_platform' 2>/dev/null; then
    fail "a venv without the recipe's .pth imports hailo_platform: the check above proves nothing"
fi
rm -rf "$ROOT/tmp/plain-venv"
say "negative control: a plain venv cannot import hailo_platform"
got=$(in_root /opt/appliance/bin/python -c 'import sys, lgpio; print(lgpio.__file__, "on Python", sys.version.split()[0])') \
    || fail "lgpio does not import"
say "lgpio built and imports: $got"

version=$(in_root appliance --version) || fail "appliance --version"
say "$version"
in_root appliance update --help > /dev/null || fail "appliance update --help"
say "appliance update (install, mark-good) is there"

# The Ollama backend's request, as hailo-ollama's typed DTOs would read it.
cp "$HERE/standins/hailo_ollama.py" "$ROOT/tmp/hailo_ollama.py"
got=$(in_root /opt/appliance/bin/python /tmp/hailo_ollama.py --check \
    /usr/share/appliance/models/ollama-qwen2.5-instruct-1.5b.toml 2>&1) \
    || { rm -f "$ROOT/tmp/hailo_ollama.py"; fail "$got"; }
rm -f "$ROOT/tmp/hailo_ollama.py"
say "$got"

in_root appliance selftest > "$OUT/selftest.txt" 2>&1 || { cat "$OUT/selftest.txt" >&2; fail "appliance selftest"; }
say "appliance selftest passed:"
sed 's/^/    /' "$OUT/selftest.txt" >> "$R"
# (nft -c needs netlink, which qemu-user does not translate: the ruleset is
# checked with the host's nft in make test.)
in_root sh -c 'test "$(id -u appliance-broker)" = 940 && test "$(id -u appliance-agent)" = 941' \
    || fail "users not made with their fixed ids"
say "users appliance-broker (940), appliance-agent (941)"
