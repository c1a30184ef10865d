#!/bin/sh
# Install the appliance's system files from deploy/ into the root file system
# ROOT: units, sysusers.d, tmpfiles.d, configuration, policies, model
# manifests, the firewall, the RAUC configuration and the pairing hint.
# The Python package itself goes in separately (customize.sh).
# Used by the Pi image recipe, by `make image-check` and by the tests.
set -eu
ROOT=${1:?usage: install-deploy.sh ROOT}
SRC=$(cd "$(dirname "$0")/.." && pwd)

inst() { # mode source destination
    install -D -m "$1" "$2" "$ROOT$3"
}
for unit in "$SRC"/deploy/systemd/*.service; do
    inst 0644 "$unit" "/usr/lib/systemd/system/$(basename "$unit")"
done
for conf in "$SRC"/deploy/systemd/system.conf.d/*.conf; do
    inst 0644 "$conf" "/usr/lib/systemd/system.conf.d/$(basename "$conf")"
done
inst 0644 "$SRC/deploy/sysusers.d/appliance.conf" /usr/lib/sysusers.d/appliance.conf
inst 0644 "$SRC/deploy/tmpfiles.d/appliance.conf" /usr/lib/tmpfiles.d/appliance.conf
inst 0644 "$SRC/deploy/appliance/appliance.toml" /etc/appliance/appliance.toml
inst 0644 "$SRC/deploy/appliance/agent.env" /etc/appliance/agent.env
inst 0755 "$SRC/deploy/appliance/pairing-hint" /usr/lib/appliance/pairing-hint
inst 0644 "$SRC/deploy/nftables/appliance.nft" /etc/nftables.conf
for f in "$SRC"/deploy/policies/*.cedar "$SRC"/deploy/policies/*.cedarschema; do
    inst 0644 "$f" "/etc/appliance/policies/$(basename "$f")"
done
# The policies' own cases, so `appliance selftest` can run them on the box.
inst 0644 "$SRC/deploy/policies/tests/cases.json" /etc/appliance/policies/tests/cases.json
for f in "$SRC"/models/*.toml; do
    inst 0644 "$f" "/usr/share/appliance/models/$(basename "$f")"
done
# The HailoRT version everything Hailo on the image is pinned to (the self-test reads it).
inst 0644 "$SRC/image-build/hailo.toml" /usr/share/appliance/hailo.toml
for f in "$SRC"/docs/*.md; do
    inst 0644 "$f" "/usr/share/doc/appliance/$(basename "$f")"
done
inst 0644 "$SRC/image-build/rauc/system.conf" /etc/rauc/system.conf
inst 0755 "$SRC/image-build/rauc/tryboot-backend" /usr/lib/appliance/tryboot-backend
inst 0755 "$SRC/image-build/grow-data.sh" /usr/lib/appliance/grow-data
mkdir -p "$ROOT/data"
