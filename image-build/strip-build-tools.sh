#!/bin/sh
# Remove the compilers and headers the venv was built with, keeping the
# runtime libraries the built extensions link to (tpm2-tss) and everything
# else that was asked for. Refuses, before removing anything, when the purge
# would take a package installed on purpose, dkms, or a package whose DKMS
# module source is in /usr/src (the Hailo driver: its removal deletes the
# kernel module DKMS built); and checks afterwards that every DKMS-built
# module is still there.
#   strip-build-tools.sh [--simulate] ROOT PACKAGE...
set -eu
simulate=
if [ "${1:-}" = --simulate ]; then simulate=1; shift; fi
ROOT=$1
shift
chroot "$ROOT" dpkg-query -W -f='${Package}\n' 'libtss2-*' | grep -v -- '-dev$' \
    | xargs chroot "$ROOT" apt-mark manual > /dev/null
# What the purge would remove, and which of those must stay.
# (apt itself refuses to break a held package: the Hailo packages are held.)
if ! plan=$(chroot "$ROOT" apt-get -s purge --autoremove "$@" 2>&1); then
    echo "strip-build-tools.sh: apt refuses to purge $*:" >&2
    printf '%s\n' "$plan" | tail -n 8 >&2
    exit 1
fi
gone=$(printf '%s\n' "$plan" | sed -n 's/^Purg \([^ ]*\).*/\1/p')
keep="dkms $(chroot "$ROOT" apt-mark showmanual | tr '\n' ' ')"
keep="$keep $(chroot "$ROOT" sh -c 'dpkg -S /usr/src/*/dkms.conf 2>/dev/null' | cut -d: -f1 | tr ',\n' '  ')"
taken=
for p in $gone; do
    case " $* " in *" $p "*) continue ;; esac
    case " $keep " in *" $p "*) taken="$taken $p" ;; esac
done
if [ -n "$taken" ]; then
    echo "strip-build-tools.sh: purging $* would also remove$taken; refusing" >&2
    exit 1
fi
[ -z "$simulate" ] || { echo "strip-build-tools.sh: would remove:" $gone; exit 0; }
modules() { find "$ROOT/usr/lib/modules" -path '*/updates/*' -name '*.ko*' 2>/dev/null | sort; }
before=$(modules)
chroot "$ROOT" apt-get purge -y --autoremove "$@"
chroot "$ROOT" apt-get clean
if [ "$(modules)" != "$before" ]; then
    echo "strip-build-tools.sh: DKMS-built modules disappeared: $before" >&2
    exit 1
fi
