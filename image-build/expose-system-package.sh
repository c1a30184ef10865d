#!/bin/sh
# Let the venv VENV inside ROOT import exactly these packages of the system's
# Python (Debian's /usr/lib/python3/dist-packages) and nothing else of it:
# a folder of links, named in a .pth file of the venv's site-packages.
# (--system-site-packages would expose every Debian Python package.)
#   expose-system-package.sh ROOT VENV PACKAGE...
set -eu
ROOT=$1 VENV=$2
shift 2
DIST=/usr/lib/python3/dist-packages
site=$(ls -d "$ROOT$VENV"/lib/python3*/site-packages 2>/dev/null | head -n1)
[ -n "$site" ] || { echo "expose-system-package.sh: no venv at $ROOT$VENV" >&2; exit 1; }
mkdir -p "$ROOT$VENV/system-packages"
for package in "$@"; do
    [ -d "$ROOT$DIST/$package" ] || {
        echo "expose-system-package.sh: $DIST/$package is not installed in $ROOT" >&2
        exit 1
    }
    ln -sfn "$DIST/$package" "$ROOT$VENV/system-packages/$package"
done
echo "$VENV/system-packages" > "$site/appliance-system-packages.pth"
