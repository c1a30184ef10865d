#!/bin/sh
# Remove the compilers and headers the venv was built with, keeping the
# runtime libraries the built extensions link to (tpm2-tss).
#   strip-build-tools.sh ROOT PACKAGE...
set -eu
ROOT=$1
shift
chroot "$ROOT" dpkg-query -W -f='${Package}\n' 'libtss2-*' | grep -v -- '-dev$' \
    | xargs chroot "$ROOT" apt-mark manual > /dev/null
chroot "$ROOT" apt-get purge -y --autoremove "$@"
chroot "$ROOT" apt-get clean
