#!/bin/sh
# Remove the compilers and headers the venv was built with, keeping the
# runtime libraries the built extensions link to (tpm2-tss) and everything
# else that was asked for. Refuses (before removing anything) when the purge
# would take a package installed on purpose with it: purging gcc, say, takes
# dkms and with it the Hailo driver package, whose removal deletes the
# kernel module it built.
#   strip-build-tools.sh [--simulate] ROOT PACKAGE...
set -eu
simulate=
if [ "${1:-}" = --simulate ]; then simulate=1; shift; fi
ROOT=$1
shift
chroot "$ROOT" dpkg-query -W -f='${Package}\n' 'libtss2-*' | grep -v -- '-dev$' \
    | xargs chroot "$ROOT" apt-mark manual > /dev/null
# What the purge would remove, and which of those were installed on purpose.
gone=$(chroot "$ROOT" apt-get -s purge --autoremove "$@" | sed -n 's/^Purg \([^ ]*\).*/\1/p')
manual=$(chroot "$ROOT" apt-mark showmanual)
taken=
for p in $gone; do
    case " $* " in *" $p "*) continue ;; esac
    if printf '%s\n' "$manual" | grep -qx "$p"; then taken="$taken $p"; fi
done
if [ -n "$taken" ]; then
    echo "strip-build-tools.sh: purging $* would also remove$taken; refusing" >&2
    exit 1
fi
[ -z "$simulate" ] || { echo "strip-build-tools.sh: would remove:" $gone; exit 0; }
chroot "$ROOT" apt-get purge -y --autoremove "$@"
chroot "$ROOT" apt-get clean
