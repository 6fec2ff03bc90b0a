#!/bin/sh
# Install the Debian packages Tern needs (host side + test guest inputs).
# Idempotent: apt only runs when at least one package is missing.
# Runs as root directly (CI) or through sudo otherwise.
#
# Usage: scripts/install-deps.sh [--print]
#   --print  only list the missing packages, install nothing (exit 1 if any)
set -eu

PACKAGES="
qemu-system-x86
qemu-utils
linux-image-cloud-amd64
busybox-static
cpio
gzip
libxml2-dev
libvirt0
libvirt-clients
libvirt-daemon-system
libvirt-daemon-driver-qemu
socat
iproute2
bsdutils
python3
ca-certificates
"

missing=""
for p in $PACKAGES; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    if [ "$status" != "installed" ]; then
        missing="$missing $p"
    fi
done

if [ -z "$missing" ]; then
    echo "install-deps: all packages already installed"
    exit 0
fi

if [ "${1:-}" = "--print" ]; then
    echo "install-deps: missing:$missing"
    exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "install-deps: not root and sudo not available; missing:$missing" >&2
    exit 1
fi

echo "install-deps: installing:$missing"
$SUDO apt-get update
# shellcheck disable=SC2086
$SUDO env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends $missing
echo "install-deps: done"
